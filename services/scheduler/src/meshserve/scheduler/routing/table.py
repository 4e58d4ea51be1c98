"""The routes as one scheduler process knows them, kept current from the route log.

PURE: no I/O, no clock. Loaded from a `TableState`-shaped snapshot and changed only by
route log entries (routing/log.py lists the kinds); `apply` returns which models and vmodels
changed, `changes` / `snapshot` encode `RouteUpdate` wire bytes for them (protobuf's own
bytes, built by routes.py). A model's route is its loaded copies on registered pods,
sorted by pod id; a model that is not registered has no route (it is "removed").

Copies are tracked for every model the log names, registered or not, and on pods that
are not registered (yet, or any more), because either may change back: a route is
derived from all three facts when it is encoded.

Model and pod ids are the bytes the log holds (UTF-8), never decoded on the hot path;
`route()` takes and gives text for callers.

May import: `routing.routes` only (pure; in the pure-modules contract).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshserve.scheduler.routing.routes import (
    EndpointTuple,
    encode_endpoint,
    encode_route_update,
    length_delimited,
    route_element,
    update_bytes,
)


@dataclass
class Changed:
    models: dict[bytes, None] = field(default_factory=dict)   # an ordered set
    vmodels: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.models or self.vmodels)


class RouteTable:
    """(Hot paths are `apply` and `changes`: 10,000 changes make one update, ~1 us of
    Python per change each. Copies are indexed by model only; the models on a pod are
    found by a scan when a pod goes or moves, which is rare next to copies coming and
    going. A model's pods are a tuple in the order they came, sorted when a route with
    more than one is encoded; tuples of bytes drop out of the cycle collector's lists,
    whose full passes would otherwise walk 100,000 sets while an update is built.)"""

    def __init__(
        self,
        *,
        models: Iterable[bytes] = (),
        loaded: Iterable[tuple[bytes, bytes]] = (),
        pods: Iterable[EndpointTuple] = (),
        vmodels: Mapping[str, str] | None = None,
    ) -> None:
        self.registered: set[bytes] = set(models)
        self.pods: dict[bytes, EndpointTuple] = {}       # registered pods
        self.limits: dict[bytes, int] = {}               # pod -> per-copy concurrency limit (M entries)
        self._endpoint: dict[bytes, bytes] = {}          # pod -> its Route.endpoints element
        self.vmodels: dict[str, str] = dict(vmodels or {})
        grouped: dict[bytes, list[bytes]] = {}
        for model, pod in loaded:
            held = grouped.setdefault(model, [])
            if pod not in held:
                held.append(pod)
        self.copies: dict[bytes, tuple[bytes, ...]] = {model: tuple(pods) for model, pods in grouped.items()}
        for endpoint in pods:
            self._set_pod(endpoint)

    # -- state ---------------------------------------------------------------------------
    def _set_pod(self, endpoint: EndpointTuple) -> None:
        """A pod's endpoint; a fourth element sets its concurrency limit, else the limit it
        has (an A entry carries addresses only)."""
        pod = endpoint[0].encode()
        if len(endpoint) > 3:
            limit = int(endpoint[3])
            if limit:
                self.limits[pod] = limit
            else:
                self.limits.pop(pod, None)
        limit = self.limits.get(pod, 0)
        endpoint = (endpoint[0], endpoint[1], endpoint[2], limit) if limit else (endpoint[0], endpoint[1], endpoint[2])
        self.pods[pod] = endpoint
        self._endpoint[pod] = length_delimited(0x12, encode_endpoint(endpoint))

    def models_on(self, pod: bytes) -> set[bytes]:
        """The models with a loaded copy on `pod` (a scan of every model's copies)."""
        return {model for model, held in self.copies.items() if pod in held}

    def route(self, model: str) -> list[EndpointTuple] | None:
        """The model's endpoints, sorted by pod id; None when it is not registered."""
        key = model.encode()
        if key not in self.registered:
            return None
        pods = self.pods
        return [pods[p] for p in sorted(self.copies.get(key, ())) if p in pods]

    # -- log entries ---------------------------------------------------------------------
    def apply(self, flat: Sequence[bytes]) -> Changed:
        """Apply route log entries (kind, a, b flattened, in log order); returns what
        changed. An entry of an unknown kind is an error: it means the table and the
        scripts disagree about the log format."""
        changed = Changed()
        models, vmodels = changed.models, changed.vmodels
        copies = self.copies
        for kind, a, b in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
            if kind == b"+":
                held = copies.get(a)
                if held is None:
                    copies[a] = (b,)
                elif b not in held:
                    copies[a] = (*held, b)
                models[a] = None
            elif kind == b"-":
                held = copies.get(a)
                if held is not None and b in held:
                    if len(held) == 1:
                        del copies[a]
                    else:
                        others = list(held)
                        others.remove(b)
                        copies[a] = tuple(others)
                models[a] = None
            elif kind == b"P":
                there = self.models_on(a)
                for model in there:
                    held = tuple(p for p in copies[model] if p != a)
                    if held:
                        copies[model] = held
                    else:
                        del copies[model]
                models.update(dict.fromkeys(there))
                self.pods.pop(a, None)
                self._endpoint.pop(a, None)
                self.limits.pop(a, None)
            elif kind == b"A":
                length, _, rest = b.partition(b":")
                n = int(length)
                self._set_pod((a.decode(), rest[:n].decode(), rest[n:].decode()))
                models.update(dict.fromkeys(self.models_on(a)))
            elif kind == b"M":
                limit = int(b or 0)
                known = self.pods.get(a)
                if known is not None:
                    self._set_pod((known[0], known[1], known[2], limit))
                elif limit:
                    self.limits[a] = limit  # its A entry follows
                else:
                    self.limits.pop(a, None)
                models.update(dict.fromkeys(self.models_on(a)))
            elif kind == b"R":
                self.registered.add(a)
                models[a] = None
            elif kind == b"U":
                self.registered.discard(a)
                models[a] = None
            elif kind == b"V":
                self.vmodels[a.decode()] = b.decode()
                vmodels.add(a.decode())
            elif kind == b"X":
                self.vmodels.pop(a.decode(), None)
                vmodels.add(a.decode())
            else:
                raise ValueError(f"route log entry of unknown kind {kind!r}")
        return changed

    # -- wire bytes ----------------------------------------------------------------------
    def _route_elements(self, models: Iterable[bytes], out: list[bytes], removed: list[bytes]) -> None:
        registered, copies, endpoint = self.registered, self.copies, self._endpoint
        append = out.append
        for model in models:
            if model not in registered:
                removed.append(model)
                continue
            held = copies.get(model)
            if held is None:
                append(route_element(model, b""))
            elif len(held) == 1:
                append(route_element(model, endpoint.get(held[0], b"")))
            elif len(held) == 2:   # the common case of several: no sort, no list
                x, y = held
                if y < x:
                    x, y = y, x
                append(route_element(model, endpoint.get(x, b"") + endpoint.get(y, b"")))
            else:
                append(route_element(model, b"".join([endpoint.get(pod, b"") for pod in sorted(held)])))

    def changes(self, changed: Changed, *, version: int) -> bytes:
        """The `RouteUpdate` for what `apply` said changed."""
        routes: list[bytes] = []
        removed: list[bytes] = []
        self._route_elements(changed.models, routes, removed)
        vmodels = sorted(v for v in changed.vmodels if v in self.vmodels)
        tail = encode_route_update(
            vmodels=[(v, self.vmodels[v]) for v in vmodels],
            removed_vmodels=sorted(v for v in changed.vmodels if v not in self.vmodels),
        )
        return update_bytes([*routes, *(length_delimited(0x1A, m) for m in removed), tail], version=version)

    def snapshot(self, *, version: int) -> bytes:
        """A snapshot `RouteUpdate`: every registered model's route and every vmodel."""
        routes: list[bytes] = []
        self._route_elements(sorted(self.registered), routes, [])
        tail = encode_route_update(vmodels=sorted(self.vmodels.items()))
        return update_bytes([*routes, tail], version=version, snapshot=True)
