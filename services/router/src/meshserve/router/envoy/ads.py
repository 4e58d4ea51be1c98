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
more. A NACK is logged with Envoy's `error_detail` and remembered; Envoy keeps its old
config for that type. Updates published during a cycle coalesce into the next one.

`await server.update(models, vmodels)` returns the new version; `await
server.wait_acked(version)` returns when every connected Envoy has ACKed it (raises
`XdsRejected` on a NACK). Mutated on the event loop only.
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
from google.protobuf import any_pb2

from meshserve.router.envoy import resources as res
from meshserve.router.table import Endpoint

log = logging.getLogger(__name__)

WILDCARD_TYPES = frozenset({res.CLUSTER, res.LISTENER, res.SCOPED_ROUTE})
# (type, keep names that left the state): clusters go first without removals, last with
PHASES = ((res.CLUSTER, True), (res.LISTENER, False), (res.SCOPED_ROUTE, False), (res.ROUTE, False), (res.CLUSTER, False))
MAX_MESSAGE = 1 << 30


class XdsRejected(Exception):
    """Envoy NACKed a version: it kept its previous config for that resource type."""


@dataclass
class _Subscription:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # name -> version (delta) or body hash key (sotw)
    sent: dict[str, bytes] = field(default_factory=dict)  # sotw: the last resources sent
    dirty: bool = True  # the client asked for something: answer even if nothing changed


@dataclass(eq=False)
class _Stream:
    delta: bool
    peer: str
    subs: dict[str, _Subscription] = field(default_factory=dict)
    pending: dict[str, tuple[str, asyncio.Future[str | None]]] = field(default_factory=dict)  # type -> (nonce, ack)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    synced: int = -1
    nonces: itertools.count[int] = field(default_factory=itertools.count)


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Holds the current resources and pushes them to every connected Envoy."""

    def __init__(self, config: res.DataPathConfig) -> None:
        self.builder = res.RouteBuilder(config)
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
            response = self._delta_response(stream, sub, type_url, snapshot, keep) if stream.delta else self._sotw_response(
                stream, sub, type_url, snapshot, keep, target
            )
            if response is None:
                continue
            ack: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            stream.pending[type_url] = (response.nonce, ack)
            await context.write(response)
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

    def _wanted(self, sub: _Subscription, type_url: str, snapshot: res.Resources) -> dict[str, bytes]:
        current = snapshot.get(type_url, {})
        if sub.wildcard:
            return current
        return {name: current[name] for name in sub.names if name in current}

    def _sotw_response(
        self, stream: _Stream, sub: _Subscription, type_url: str, snapshot: res.Resources, keep: bool, version: int
    ) -> Any:
        wanted = self._wanted(sub, type_url, snapshot)
        if keep:  # make before break: names that left the state stay until the last phase
            wanted = {**sub.sent, **wanted}
        if not sub.dirty and _same(wanted, sub.sent):
            return None
        sub.dirty, sub.sent = False, wanted
        return discovery_pb2.DiscoveryResponse(
            version_info=str(version),
            type_url=type_url,
            nonce=str(next(stream.nonces)),
            resources=[any_pb2.Any(type_url=type_url, value=body) for body in wanted.values()],
        )

    def _delta_response(
        self, stream: _Stream, sub: _Subscription, type_url: str, snapshot: res.Resources, keep: bool
    ) -> Any:
        wanted = self._wanted(sub, type_url, snapshot)
        versions = self._versions.get(type_url, {})
        changed = [name for name in wanted if sub.known.get(name) != versions.get(name)]
        removed = [] if keep else [name for name in sub.known if name not in wanted]
        if not changed and not removed and not sub.dirty:
            return None
        sub.dirty = False
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=str(self.version), type_url=type_url, nonce=str(next(stream.nonces))
        )
        for name in changed:
            sub.known[name] = versions[name]
            item = response.resources.add(name=name, version=versions[name])
            item.resource.type_url, item.resource.value = type_url, wanted[name]
        for name in removed:
            del sub.known[name]
        response.removed_resources.extend(removed)
        return response


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
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(server, grpc_server)
    bound = grpc_server.add_insecure_port(f"{host}:{port}")
    await grpc_server.start()
    return grpc_server, bound
