"""The scheduler's routing wing: what routers are told about where each model is served.

Owns the route messages (`routes`: pure encoding of RouteUpdates), the route table held
in memory (`table`: pure), the route log in Redis (`log`: every change to copies, pods
and vmodels appended by the store's Lua scripts) and the route hub (`hub`: one tail of
the log per process, fanned out to every `WatchRoutes` stream).

May import: `meshserve.common`, the scheduler's `models` and `metrics`, and (for `log`
and `hub` only) Redis. Never imports the use cases (`service`, `copies`, `vmodels`, ...)
or the transports (`server`, `api`, `app`).
"""
