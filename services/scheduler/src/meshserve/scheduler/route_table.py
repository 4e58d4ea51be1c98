"""The routes as one scheduler process knows them, kept current from the route log.

PURE: no I/O, no clock. Loaded from a `TableState`-shaped snapshot and changed only by
route log entries (routelog.py lists the kinds); `apply` returns which models and vmodels
changed, `changes` / `snapshot` encode `RouteUpdate` wire bytes for them (protobuf's own
bytes, built by routes.py). A model's route is its loaded copies on registered pods,
sorted by pod id; a model that is not registered has no route (it is "removed").

Copies are tracked for every model the log names, registered or not, and on pods that
are not registered (yet, or any more), because either may change back: a route is
derived from all three facts when it is encoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from meshserve.scheduler.routes import (
    EndpointTuple,
    encode_endpoint,
    encode_route_update,
    length_delimited,
    route_element,
    update_bytes,
)


@dataclass
class Changed:
    models: set[str] = field(default_factory=set)
    vmodels: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.models or self.vmodels)


class RouteTable:
    """(Hot paths are `apply` and `changes`: 10,000 changes make one update. Copies are
    indexed by model only; the models on a pod are found by a scan when a pod goes or
    moves, which is rare next to copies coming and going. A model's pods are a sorted
    tuple, not a set: sorted once per change instead of per encoding, and tuples of
    strings drop out of the cycle collector's lists, whose full passes would otherwise
    walk 100,000 sets while an update is being built.)"""

    def __init__(
        self,
        *,
        models: Iterable[str] = (),
        loaded: Iterable[tuple[str, str]] = (),
        pods: Iterable[EndpointTuple] = (),
        vmodels: Mapping[str, str] | None = None,
    ) -> None:
        self.registered: set[str] = set(models)
        self.pods: dict[str, EndpointTuple] = {}       # registered pods
        self._endpoint: dict[str, bytes] = {}          # pod -> its Route.endpoints element
        self.vmodels: dict[str, str] = dict(vmodels or {})
        grouped: dict[str, set[str]] = {}
        for model, pod in loaded:
            grouped.setdefault(model, set()).add(pod)
        # model -> pods with a loaded copy, sorted
        self.copies: dict[str, tuple[str, ...]] = {model: tuple(sorted(pods)) for model, pods in grouped.items()}
        for endpoint in pods:
            self._set_pod(endpoint)

    # -- state ---------------------------------------------------------------------------
    def _set_pod(self, endpoint: EndpointTuple) -> None:
        self.pods[endpoint[0]] = endpoint
        self._endpoint[endpoint[0]] = length_delimited(0x12, encode_endpoint(endpoint))

    def models_on(self, pod: str) -> set[str]:
        """The models with a loaded copy on `pod` (a scan of every model's copies)."""
        return {model for model, held in self.copies.items() if pod in held}

    def route(self, model: str) -> list[EndpointTuple] | None:
        """The model's endpoints, sorted by pod id; None when it is not registered."""
        if model not in self.registered:
            return None
        pods = self.pods
        return [pods[p] for p in self.copies.get(model, ()) if p in pods]

    # -- log entries ---------------------------------------------------------------------
    def apply(self, flat: Sequence[str]) -> Changed:
        """Apply route log entries (kind, a, b, c flattened, in log order); returns what
        changed. An entry of an unknown kind is an error: it means the table and the
        scripts disagree about the log format."""
        changed = Changed()
        models, vmodels = changed.models, changed.vmodels
        copies = self.copies
        for kind, a, b, c in zip(flat[0::4], flat[1::4], flat[2::4], flat[3::4], strict=True):
            if kind == "+":
                held = copies.get(a)
                if held is None:
                    copies[a] = (b,)
                elif b not in held:
                    copies[a] = tuple(sorted((*held, b)))
                models.add(a)
            elif kind == "-":
                held = copies.get(a)
                if held is not None and b in held:
                    if len(held) == 1:
                        del copies[a]
                    else:
                        copies[a] = tuple(p for p in held if p != b)
                models.add(a)
            elif kind == "P":
                there = self.models_on(a)
                for model in there:
                    held = tuple(p for p in copies[model] if p != a)
                    if held:
                        copies[model] = held
                    else:
                        del copies[model]
                models |= there
                self.pods.pop(a, None)
                self._endpoint.pop(a, None)
            elif kind == "A":
                self._set_pod((a, b, c))
                models |= self.models_on(a)
            elif kind == "R":
                self.registered.add(a)
                models.add(a)
            elif kind == "U":
                self.registered.discard(a)
                models.add(a)
            elif kind == "V":
                self.vmodels[a] = b
                vmodels.add(a)
            elif kind == "X":
                self.vmodels.pop(a, None)
                vmodels.add(a)
            else:
                raise ValueError(f"route log entry of unknown kind {kind!r}")
        return changed

    # -- wire bytes ----------------------------------------------------------------------
    def _route_elements(self, models: Iterable[str], out: list[bytes], removed: list[str]) -> None:
        registered, copies, endpoint = self.registered, self.copies, self._endpoint
        append = out.append
        for model in models:
            if model not in registered:
                removed.append(model)
                continue
            held = copies.get(model, ())
            if len(held) == 1:
                append(route_element(model, endpoint.get(held[0], b"")))
            else:
                append(route_element(model, b"".join([endpoint.get(pod, b"") for pod in held])))

    def changes(self, changed: Changed, *, version: int) -> bytes:
        """The `RouteUpdate` for what `apply` said changed."""
        routes: list[bytes] = []
        removed: list[str] = []
        self._route_elements(changed.models, routes, removed)
        vmodels = sorted(v for v in changed.vmodels if v in self.vmodels)
        tail = encode_route_update(
            removed_models=removed,
            vmodels=[(v, self.vmodels[v]) for v in vmodels],
            removed_vmodels=sorted(v for v in changed.vmodels if v not in self.vmodels),
        )
        return update_bytes([*routes, tail], version=version)

    def snapshot(self, *, version: int) -> bytes:
        """A snapshot `RouteUpdate`: every registered model's route and every vmodel."""
        routes: list[bytes] = []
        self._route_elements(sorted(self.registered), routes, [])
        tail = encode_route_update(vmodels=sorted(self.vmodels.items()))
        return update_bytes([*routes, tail], version=version, snapshot=True)
