"""The TLS of the pod's metrics port (`metrics_scheme: https`, upstream's `MM_METRICS` `scheme=https`).

Owns: the puller's choice of names and certificate for `meshserve.common.metrics_tls` (which
serves the pod's own certificate, `tls.cert_file` / `tls.key_file`, when it has one, else a
self-signed one generated at start-up). May import the puller's settings and `meshserve.common`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from meshserve.common import metrics_tls as common
from meshserve.common.metrics_tls import self_signed_pem
from meshserve.puller.settings import PullerSettings

__all__ = ["certificate_names", "metrics_tls", "self_signed_pem"]


def certificate_names(settings: PullerSettings) -> list[str]:
    """What a generated certificate is valid for: the pod (its id, the host name), the host of its
    advertised address, and the loopback names."""
    host = settings.advertise_address.rsplit(":", 1)[0].strip("[]") if settings.advertise_address else ""
    return common.certificate_names(settings.pod_id, host)


@contextlib.contextmanager
def metrics_tls(settings: PullerSettings) -> Iterator[dict[str, str]]:
    """`start_http_server`'s TLS arguments for the pod's metrics port, valid inside the `with`."""
    with common.metrics_tls(
        settings.metrics_scheme, port=settings.metrics_port, names=certificate_names(settings),
        cert_file=settings.tls.cert_file, key_file=settings.tls.key_file,
    ) as tls:  # fmt: skip
        yield tls
