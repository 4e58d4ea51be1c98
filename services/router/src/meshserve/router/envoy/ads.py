"""A grpc.aio ADS server (envoy.service.discovery.v3) that feeds Envoy the data path.

Serves any resource type the `Resources` hold (CDS, LDS, SRDS, RDS) on one aggregated
stream, in both variants:
- state of the world, `StreamAggregatedResources`: every response of a type carries all
  its resources the client asked for; `version_info` is the server version;
- incremental (delta), `DeltaAggregatedResources`: a response carries only the resources
  changed since the client last got them, and the names removed.

Per stream, a push cycle brings Envoy to the latest server version in make-before-break
order, waiting for the ACK of each response before the next: new clusters, listeners,
scopes, route configurations, and only then the removal of clusters no route uses any
more, once they have been unused for `cluster_linger_s` (a request routed by an older
route configuration, or retrying after a pod's connection failed, still names its cluster:
Envoy answers a retry whose cluster was removed `no healthy upstream`, where the failover
to the slow path would have served it; measured in `test_envoy_datapath.py`). A NACK is logged with Envoy's `error_detail` and remembered; Envoy keeps its old
config for that type. Updates published during a cycle coalesce into the next one.

`await server.update(models, vmodels)` returns the new version; `await
server.wait_acked(version)` returns when every connected Envoy has ACKed it (raises
`XdsRejected` on a NACK). Mutated on the event loop only.

Responses are encoded by hand (`encode_delta`, `encode_sotw`) from the resources' bytes and
written as bytes (the method handlers' serializer passes bytes through): a burst of
changed route tables is megabytes, which upb's message building and serializing copy several
times over; here each resource's bytes are copied once, into the response.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshserve.router.envoy import resources as res
from meshserve.router.table import Endpoint

log = logging.getLogger(__name__)

WILDCARD_TYPES = frozenset({res.CLUSTER, res.LISTENER, res.SCOPED_ROUTE})
# (type, keep names that left the state): clusters go first without removals, last with
PHASES = ((res.CLUSTER, True), (res.LISTENER, False), (res.SCOPED_ROUTE, False), (res.ROUTE, False), (res.CLUSTER, False))
MAX_MESSAGE = 1 << 30
CLUSTER_LINGER_S = 30.0
"""How long a cluster no route uses stays in Envoy: longer than a retry's back-off and a
warm request's life; unused clusters cost Envoy little (no health checks, no connections
once idle)."""


SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_DELTA = discovery_pb2.DeltaDiscoveryResponse.DESCRIPTOR.fields_by_name
_SOTW = discovery_pb2.DiscoveryResponse.DESCRIPTOR.fields_by_name
_RESOURCE = discovery_pb2.Resource.DESCRIPTOR.fields_by_name


def _tag(fields: Any, name: str) -> bytes:
    """The key of a length-delimited field (wire type 2)."""
    return res.varint(fields[name].number << 3 | 2)


def _any_parts(type_field: bytes, body: bytes) -> tuple[int, list[bytes]]:
    """An `Any` (type_url 1, value 2) as parts to join, and its length; the body not copied."""
    head = b"\x12" + res.varint(len(body))
    return len(type_field) + len(head) + len(body), [type_field, head, body]


def encode_delta(
    type_url: str, nonce: str, system_version: str, resources: Iterable[tuple[str, str, bytes]], removed: Iterable[str]
) -> bytes:
    """A serialized DeltaDiscoveryResponse; `resources`: (name, version, serialized resource)."""
    type_field = res.wire_field(1, type_url.encode())
    parts: list[bytes] = [
        res.wire_field(_DELTA["system_version_info"].number, system_version.encode()),
        res.wire_field(_DELTA["type_url"].number, type_url.encode()),
        res.wire_field(_DELTA["nonce"].number, nonce.encode()),
    ]
    resources_tag, name_tag, version_tag, any_tag = (
        _tag(_DELTA, "resources"), _tag(_RESOURCE, "name"), _tag(_RESOURCE, "version"), _tag(_RESOURCE, "resource"),
    )  # fmt: skip
    for name, version, body in resources:
        any_length, any_parts = _any_parts(type_field, body)
        name_bytes, version_bytes = name.encode(), version.encode()
        head = b"".join((
            name_tag, res.varint(len(name_bytes)), name_bytes, version_tag, res.varint(len(version_bytes)), version_bytes,
            any_tag, res.varint(any_length),
        ))  # fmt: skip
        parts += [resources_tag, res.varint(len(head) + any_length), head, *any_parts]
    removed_tag = _tag(_DELTA, "removed_resources")
    for name in removed:
        name_bytes = name.encode()
        parts += [removed_tag, res.varint(len(name_bytes)), name_bytes]
    return b"".join(parts)


def encode_sotw(type_url: str, nonce: str, version: str, bodies: Iterable[bytes]) -> bytes:
    """A serialized DiscoveryResponse carrying `bodies` (serialized resources of `type_url`)."""
    type_field = res.wire_field(1, type_url.encode())
    parts: list[bytes] = [
        res.wire_field(_SOTW["version_info"].number, version.encode()),
        res.wire_field(_SOTW["type_url"].number, type_url.encode()),
        res.wire_field(_SOTW["nonce"].number, nonce.encode()),
    ]
    resources_tag = _tag(_SOTW, "resources")
    for body in bodies:
        any_length, any_parts = _any_parts(type_field, body)
        parts += [resources_tag, res.varint(any_length), *any_parts]
    return b"".join(parts)


def _serialize(message: Any) -> bytes:
    """The response serializer: bytes as they are (encoded by hand), else the message's."""
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


@dataclass(frozen=True)
class _Response:
    nonce: str
    body: bytes


class XdsRejected(Exception):
    """Envoy NACKed a version: it kept its previous config for that resource type."""


@dataclass
class _Subscription:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # name -> version (delta) or body hash key (sotw)
    sent: dict[str, bytes] = field(default_factory=dict)  # sotw: the last resources sent
    dirty: bool = True  # the client asked for something: answer even if nothing changed
    gone: dict[str, float] = field(default_factory=dict)  # name -> when it left the state (clusters linger)


@dataclass(eq=False)
class _Stream:
    delta: bool
    peer: str
    subs: dict[str, _Subscription] = field(default_factory=dict)
    pending: dict[str, tuple[str, asyncio.Future[str | None]]] = field(default_factory=dict)  # type -> (nonce, ack)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    synced: int = -1
    nonces: itertools.count[int] = field(default_factory=itertools.count)
    linger_timer: asyncio.TimerHandle | None = None  # wakes the stream when lingering clusters are due


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Holds the current resources and pushes them to every connected Envoy."""

    def __init__(self, config: res.DataPathConfig, *, cluster_linger_s: float = CLUSTER_LINGER_S) -> None:
        self.builder = res.RouteBuilder(config)
        self.cluster_linger_s = cluster_linger_s
        self.version = 0
        self.resources: res.Resources = self.builder.resources()
        self._versions: dict[str, dict[str, str]] = {t: dict.fromkeys(named, "0") for t, named in self.resources.items()}
        self._streams: set[_Stream] = set()
        self._synced = asyncio.Condition()
        self._rejected: list[tuple[int, int, str]] = []  # (first version, last version, error)

    # -- the API --------------------------------------------------------------------------
    async def update(self, models: Mapping[str, tuple[Endpoint, ...]], vmodels: Mapping[str, str]) -> int:
        """Route `models`/`vmodels`; returns the version to pass to `wait_acked`."""
        self.builder.replace(models, vmodels)
        return self.publish(self.builder.resources())

    async def change(
        self,
        *,
        models: Mapping[str, tuple[Endpoint, ...]] | None = None,
        removed_models: Iterable[str] = (),
        vmodels: Mapping[str, str] | None = None,
        removed_vmodels: Iterable[str] = (),
    ) -> int:
        """Apply a change of the table (`RouteBuilder.change`); returns the new version."""
        self.builder.change(
            models=models or {}, removed_models=removed_models, vmodels=vmodels or {}, removed_vmodels=removed_vmodels
        )
        return self.publish(self.builder.resources())

    def publish(self, resources: res.Resources) -> int:
        """Make `resources` current (a new version if anything changed) and wake the streams."""
        change = res.diff(self.resources, resources)
        if change.empty:
            return self.version
        self.version += 1
        version = str(self.version)
        for type_url, names in change.changed.items():
            versions = self._versions.setdefault(type_url, {})
            for name in names:
                versions[name] = version
        for type_url, names in change.removed.items():
            for name in names:
                self._versions[type_url].pop(name, None)
        self.resources = resources
        for stream in self._streams:
            stream.wake.set()
        return self.version

    async def wait_acked(self, version: int, *, streams: int = 1) -> None:
        """Wait until at least `streams` Envoys are connected and all have applied `version`."""
        async with self._synced:
            await self._synced.wait_for(
                lambda: len(self._streams) >= streams and all(s.synced >= version for s in self._streams)
            )
        for first, last, error in self._rejected:
            if first <= version <= last:
                raise XdsRejected(f"version {version}: {error}")

    @property
    def connected(self) -> int:
        return len(self._streams)

    # -- the RPCs -------------------------------------------------------------------------
    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve(_Stream(delta=False, peer=context.peer()), request_iterator, context)

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await self._serve(_Stream(delta=True, peer=context.peer()), request_iterator, context)

    async def _serve(self, stream: _Stream, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        log.info("Envoy connected (%s xDS) from %s", "delta" if stream.delta else "SotW", stream.peer)
        reader = asyncio.create_task(self._read(stream, requests), name=f"ads-read-{stream.peer}")
        self._streams.add(stream)
        try:
            while not reader.done():
                waker = asyncio.ensure_future(stream.wake.wait())
                try:
                    await asyncio.wait({waker, reader}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waker.cancel()
                if reader.done():
                    break
                stream.wake.clear()
                await self._cycle(stream, context, reader)
        finally:
            self._streams.discard(stream)
            if stream.linger_timer is not None:
                stream.linger_timer.cancel()
            reader.cancel()
            (ended,) = await asyncio.gather(reader, return_exceptions=True)
            if isinstance(ended, Exception):
                log.debug("ADS stream from %s ended: %r", stream.peer, ended)
            async with self._synced:
                self._synced.notify_all()
            log.info("Envoy disconnected from %s", stream.peer)

    async def _read(self, stream: _Stream, requests: AsyncIterator[Any]) -> None:
        async for request in requests:
            sub = stream.subs.get(request.type_url)
            first = sub is None
            if sub is None:
                sub = stream.subs[request.type_url] = _Subscription()
            answered = self._settle(stream, request)
            if stream.delta:
                _subscribe_delta(sub, request, first=first)
            else:
                names = set(request.resource_names)
                wildcard = request.type_url in WILDCARD_TYPES and (not names or "*" in names)
                if first or not answered or names != sub.names or wildcard != sub.wildcard:
                    sub.dirty = True
                sub.names, sub.wildcard = names - {"*"}, wildcard
            stream.wake.set()

    def _settle(self, stream: _Stream, request: Any) -> bool:
        """Resolve the pending response this request ACKs or NACKs. False if the request is a
        new ask that needs an answer (sotw: no nonce; a stale nonce refers to an answer sent)."""
        pending = stream.pending.get(request.type_url)
        if not request.response_nonce or pending is None or pending[0] != request.response_nonce:
            return not stream.delta and bool(request.response_nonce)  # sotw: a stale nonce is no new ask
        del stream.pending[request.type_url]
        error = request.error_detail.message if request.HasField("error_detail") else None
        if not pending[1].done():
            pending[1].set_result(error)
        return True

    async def _cycle(self, stream: _Stream, context: grpc.aio.ServicerContext, reader: asyncio.Task[None]) -> None:
        first, target, snapshot, errors = stream.synced + 1, self.version, self.resources, []
        for type_url, keep in PHASES:
            sub = stream.subs.get(type_url)
            if sub is None:
                continue
            kept: bool | frozenset[str] = keep
            if type_url == res.CLUSTER and not keep:
                kept = self._lingering(stream, sub, snapshot)
            response = self._delta_response(stream, sub, type_url, snapshot, kept) if stream.delta else self._sotw_response(
                stream, sub, type_url, snapshot, kept, target
            )
            if response is None:
                continue
            ack: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            stream.pending[type_url] = (response.nonce, ack)
            await context.write(response.body)
            waiting: set[asyncio.Future[Any]] = {ack, reader}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not ack.done():
                return  # the stream ended
            if ack.result() is not None:
                errors.append(f"{type_url.rsplit('.', 1)[-1]}: {ack.result()}")
                log.warning("Envoy %s rejected %s at version %d: %s", stream.peer, type_url, target, ack.result())
        if errors:
            self._rejected.append((first, target, "; ".join(errors)))
        async with self._synced:
            stream.synced = max(stream.synced, target)
            self._synced.notify_all()

    def _lingering(self, stream: _Stream, sub: _Subscription, snapshot: res.Resources) -> frozenset[str]:
        """The clusters Envoy holds that left the state less than `cluster_linger_s` ago (kept
        for now); a timer wakes the stream when the first of them is due for removal."""
        current = snapshot.get(res.CLUSTER, {})
        now = asyncio.get_running_loop().time()
        held = sub.known if stream.delta else sub.sent
        for name in [n for n in sub.gone if n in current or n not in held]:
            del sub.gone[name]  # back in the state, or removed already
        kept, due = set(), None
        for name in held:
            if name in current:
                continue
            since = sub.gone.setdefault(name, now)
            if now - since < self.cluster_linger_s:
                kept.add(name)
                due = min(due or since, since)
        if due is not None and stream.linger_timer is None:
            def wake() -> None:
                stream.linger_timer = None
                stream.wake.set()

            stream.linger_timer = asyncio.get_running_loop().call_later(due + self.cluster_linger_s - now, wake)
        return frozenset(kept)

    def _wanted(self, sub: _Subscription, type_url: str, snapshot: res.Resources) -> dict[str, bytes]:
        current = snapshot.get(type_url, {})
        if sub.wildcard:
            return current
        return {name: current[name] for name in sub.names if name in current}

    def _sotw_response(
        self, stream: _Stream, sub: _Subscription, type_url: str, snapshot: res.Resources,
        keep: bool | frozenset[str], version: int,
    ) -> _Response | None:
        """`keep`: True keeps every name that left the state (make before break), a set keeps
        those names (lingering clusters)."""
        wanted = self._wanted(sub, type_url, snapshot)
        if keep is True:  # make before break: names that left the state stay until the last phase
            wanted = {**sub.sent, **wanted}
        elif keep:
            wanted = {**{n: sub.sent[n] for n in keep if n in sub.sent}, **wanted}
        if not sub.dirty and _same(wanted, sub.sent):
            return None
        sub.dirty, sub.sent = False, wanted
        nonce = str(next(stream.nonces))
        return _Response(nonce, encode_sotw(type_url, nonce, str(version), wanted.values()))

    def _delta_response(
        self, stream: _Stream, sub: _Subscription, type_url: str, snapshot: res.Resources, keep: bool | frozenset[str]
    ) -> _Response | None:
        wanted = self._wanted(sub, type_url, snapshot)
        versions = self._versions.get(type_url, {})
        known = sub.known
        changed = [name for name in wanted if known.get(name) != versions.get(name)]
        if keep is True:
            removed = []
        else:
            kept = keep or frozenset()
            removed = [name for name in known if name not in wanted and name not in kept]
        if not changed and not removed and not sub.dirty:
            return None
        sub.dirty = False
        for name in changed:
            known[name] = versions[name]
        for name in removed:
            del known[name]
        nonce = str(next(stream.nonces))
        body = encode_delta(
            type_url, nonce, str(self.version), ((name, versions[name], wanted[name]) for name in changed), removed
        )
        return _Response(nonce, body)


def _subscribe_delta(sub: _Subscription, request: Any, *, first: bool) -> None:
    subscribe, unsubscribe = set(request.resource_names_subscribe), set(request.resource_names_unsubscribe)
    if first:
        # legacy wildcard: the first request of a wildcard type names nothing
        sub.wildcard = "*" in subscribe or (not subscribe and request.type_url in WILDCARD_TYPES)
        sub.known.update(request.initial_resource_versions)
        sub.dirty = True
    if "*" in subscribe:
        sub.wildcard = True
    if "*" in unsubscribe:
        sub.wildcard = False
    added = subscribe - sub.names - {"*"}
    sub.names |= added
    sub.names -= unsubscribe
    for name in unsubscribe:
        sub.known.pop(name, None)
    if added:
        sub.dirty = True


def _same(a: dict[str, bytes], b: dict[str, bytes]) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] or a[k] == b[k] for k in a)


async def start_ads(server: AdsServer, *, host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    """Serve `server` on host:port (0: any free port); returns the grpc server and its port."""
    grpc_server = grpc.aio.server(
        options=[("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
    )
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            server.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=_serialize,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            server.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=_serialize,
        ),
    }
    grpc_server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = grpc_server.add_insecure_port(f"{host}:{port}")
    await grpc_server.start()
    return grpc_server, bound
