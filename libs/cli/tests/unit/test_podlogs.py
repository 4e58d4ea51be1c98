"""Finding and following a local runtime pod's logs (`meshserve.cli.podlogs`) in a real folder."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from meshserve.cli.podlogs import PodNotFound, follow, known_pods, pick, show


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)
    return path


def test_pods_named_by_id_and_pods_of_the_controller(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs / "pod-0-mlserver.log", "m0\n")
    write(logs / "pod-0-puller.log", "p0\n")
    write(logs / "pod-77000-mlserver.log", "served\n")    # a controller pod's processes, named by folder
    write(logs / "pod-77000-puller.log", "pulled\n")
    write(logs / "old-9-puller.log", "a pod gone long ago\n")
    status = {"rt-0": {"restarts": 0, "logs": {"puller": str(logs / "pod-77000-puller.log"),
                                               "mlserver": str(logs / "pod-77000-mlserver.log")}}}
    pods = known_pods(status=status, registered=["pod-0", "rt-0"], log_dir=logs)
    assert sorted(pods) == ["pod-0", "rt-0"]
    assert list(pods["rt-0"]) == ["mlserver", "puller"]        # the model server first
    assert list(pods["pod-0"]) == ["mlserver", "puller"]
    assert sorted(known_pods(status={}, registered=None, log_dir=logs)) == ["old-9", "pod-0", "pod-77000"]


def test_an_unknown_pod_or_container_names_the_known_ones(tmp_path: Path) -> None:
    pods = {"pod-0": {"mlserver": tmp_path / "a", "puller": tmp_path / "b"}, "pod-1": {}}
    with pytest.raises(PodNotFound, match=r"no runtime pod 'pod-9' .*known pods: pod-0, pod-1$"):
        pick(pods, "pod-9", None, log_dir=tmp_path)
    with pytest.raises(PodNotFound, match="has no container 'triton'; it has: mlserver, puller"):
        pick(pods, "pod-0", "triton", log_dir=tmp_path)
    assert pick(pods, "pod-0", "puller", log_dir=tmp_path) == {"puller": tmp_path / "b"}


def test_show_prefixes_each_container_and_keeps_the_tail(tmp_path: Path) -> None:
    files = {"mlserver": write(tmp_path / "m.log", "1\n2\n3\n"), "puller": write(tmp_path / "p.log", "x\ny")}
    out = io.StringIO()
    offsets = show(files, out=out, tail=2)
    assert out.getvalue().splitlines() == ["[mlserver] 2", "[mlserver] 3", "[puller] x", "[puller] y"]
    assert offsets == {"mlserver": 6, "puller": 3}
    one = io.StringIO()
    show({"puller": files["puller"]}, out=one)
    assert one.getvalue() == "x\ny\n"


def test_follow_prints_what_is_appended_and_moves_to_a_restarted_pods_files(tmp_path: Path) -> None:
    first = write(tmp_path / "pod-1-puller.log", "old\n")
    offsets = {"puller": first.stat().st_size}
    write(first, "new line\npart")                    # an unfinished line waits for its end
    second = write(tmp_path / "pod-2-puller.log", "after the restart\n")
    stop = threading.Event()
    ticks = iter([None, {"puller": second}])

    def refresh() -> dict[str, Path] | None:
        current = next(ticks)
        if current is not None:
            stop.set()   # this tick is the last one
        return current

    out = io.StringIO()
    follow({"puller": first}, offsets, out=out, stop=stop, refresh=refresh, interval=0, refresh_every=1)
    assert out.getvalue().splitlines() == ["new line", "after the restart"]
