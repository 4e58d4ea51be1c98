"""Unit tests here import Envoy's xDS modules directly: the router's envoy package puts the
xds-protos folder on the path, so it is imported before any test module, whatever ran first."""

import meshserve.router.envoy  # noqa: F401
