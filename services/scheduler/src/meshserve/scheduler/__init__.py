"""meshserve.scheduler: the control plane, the one writer of placement.

Owns the model registry (Postgres) and the live state (Redis: pods, copies, loading, usage),
the placement and eviction decisions, loads and unloads through the pullers, scaling, vmodels,
and the events.

Wings: `store` (everything that talks to Redis or Postgres), `placement` (which pod gets a copy,
which copies make room), `routing` (what routers are told about where each model is served),
`local` (the resources `meshserve apply -f` stores without Kubernetes) and `ui` (the placement
page). The use cases (`service`, `loading`, `unloading`, `scaler`, `vmodels`, ...) sit on them;
the transports (`server`: gRPC meshserve.v1.Scheduler; `api`/`rest`: the admin HTTP API) on
those; `app` wires everything with the leader loops and `__main__` runs it.

May import `meshserve.common` and its drivers (redis, sqlalchemy, grpc, FastAPI); never another
service (router, puller, controller, cli); `ui` imports nothing of meshserve. The layers are
kept by the import contracts in pyproject.toml.
"""
