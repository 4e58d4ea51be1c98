"""Code shared by every meshserve service; imports nothing of any service.

The service skeleton: `settings` (the `ServiceSettings` base), `logging`, `errors` (the one
error hierarchy, pure), `grpcutil` (servers, channels, `ExceptionToStatusInterceptor`),
`httputil` (the HTTP error handler), `health` (`/healthz` + `/readyz`), `lifecycle` (named
tasks, signals, the run/shutdown helper), `backoff` (pure). Also: storage URIs, model ids,
labels, coalescing. Generated protobuf modules live in `meshserve.common.proto` (made by
`make proto`, never edited by hand).
"""
