"""meshserve router: the KServe v2 front door (gRPC :8033, REST :8008) and Envoy's control plane.

Owns nothing durable: an in-memory routing table pushed by the scheduler (`WatchRoutes`),
turned into Envoy routes (`envoy/`), and the Python data path that serves what Envoy
cannot (or everything, with `MESHSERVE_ROUTER_DATA_PATH=python`).

Layers (the `Router layers` import contract in pyproject.toml keeps them):

    app                                  composition root, signals, route watcher, usage reports
    server | other_rpcs | mmesh_api | rest | envoy
                                         the doors: KServe v2 gRPC, any other gRPC API, the
                                         mmesh.ModelMesh management API, v2 REST, the Envoy
                                         data path; siblings, never importing each other
    dataplane | upstream | replay        the one call path (resolve, ensure, pick, in flight,
                                         usage, retry before the first byte); model-server
                                         clients; the replayable request stream
    table : balance : scheduler_client   routes; least-request choice; the scheduler's calls
    payloads : jsonv2 : upstream_errors : metrics : settings
    inject : wire : v2 : access          pure byte surgery and protocol names; the access log

May import: `meshserve.common` only, never another service.
"""
