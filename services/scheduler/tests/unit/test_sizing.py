"""Which measured memory growths are taken as a model's size (sizing.credible_measurement)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshserve.scheduler.sizing import MIN_CREDIBLE_MEASUREMENT, credible_measurement

MIB = 1 << 20


def test_a_few_pages_for_a_model_of_megabytes_are_not_a_measurement() -> None:
    assert not credible_measurement(4096, disk_bytes=430_000)
    assert not credible_measurement(4096, disk_bytes=0)   # nothing known of the files: the absolute floor


def test_growths_from_half_the_files_up_are_measurements_imports_included() -> None:
    assert credible_measurement(215_000, disk_bytes=430_000)
    assert credible_measurement(5 * MIB, disk_bytes=430_000)   # the first copy on a fresh server: its imports
    assert not credible_measurement(214_999, disk_bytes=430_000)


@given(disk=st.integers(0, 1 << 40), measured=st.integers(0, 1 << 41))
def test_the_floor_is_half_the_files_and_never_below_the_minimum(disk: int, measured: int) -> None:
    assert credible_measurement(measured, disk_bytes=disk) == (measured >= max(MIN_CREDIBLE_MEASUREMENT, disk // 2))
    if credible_measurement(measured, disk_bytes=disk):
        assert credible_measurement(measured + 1, disk_bytes=disk)   # monotone in the measurement
