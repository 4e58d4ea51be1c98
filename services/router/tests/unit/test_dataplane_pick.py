"""The data plane's choice of copy sees its own calls in flight (least-request, power of two
choices): with two copies both are looked at, so the one with a call in flight is never
chosen while the other is idle. No sockets: the table holds the routes, `send` is ours."""

from __future__ import annotations

import asyncio

import pytest

from meshserve.common.errors import InvalidArgument
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as pb
from meshserve.router.dataplane import DataPlane
from meshserve.router.settings import RouterSettings
from meshserve.router.table import Endpoint, RoutingTable


def _plane() -> DataPlane:
    table = RoutingTable(fallback_seconds=30)
    route = pb.Route(model_id="m", endpoints=[pb.Endpoint(pod_id=p, grpc_address=f"{p}:1") for p in ("a", "b")])
    table.apply(pb.RouteUpdate(snapshot=True, routes=[route]), now=0)
    # every copy is in the table: the scheduler is never asked
    return DataPlane(settings=RouterSettings(), table=table, scheduler=None, clock=lambda: 1.0)  # type: ignore[arg-type]


async def test_a_copy_with_a_call_in_flight_is_not_chosen_while_another_is_idle() -> None:
    plane = _plane()
    release, arrived = asyncio.Event(), asyncio.Event()
    held: list[str] = []

    async def hold(endpoint: Endpoint, budget: float) -> str:
        held.append(endpoint.pod_id)
        arrived.set()
        await release.wait()
        return endpoint.pod_id

    async def answer(endpoint: Endpoint, budget: float) -> str:
        return endpoint.pod_id

    first = asyncio.create_task(plane.call("m", hold, budget=5))
    await arrived.wait()
    busy = held[0]
    assert plane.in_flight[busy] == 1
    answered = [await plane.call("m", answer, budget=5) for _ in range(20)]
    assert busy not in answered
    release.set()
    assert await first == busy
    assert plane.in_flight[busy] == 0 and plane.usage["m"] == 21


def test_the_per_model_headers_are_read_and_other_values_refused() -> None:
    assert DataPlane.balanced([]) is False
    assert DataPlane.balanced([("mm-balanced", "true")]) is True
    assert DataPlane.balanced([("mm-balanced", b"TRUE")]) is True
    assert DataPlane.balanced([("mm-balanced", "false")]) is False
    assert DataPlane.require_all([]) is False
    assert DataPlane.require_all([("mm-required", "all")]) is True
    assert DataPlane.require_all([("mm-required", "Any")]) is False
    for header, value in (("mm-balanced", "1"), ("mm-balanced", ""), ("mm-required", "both")):
        with pytest.raises(InvalidArgument, match=f"the {header} header must be"):
            (DataPlane.balanced if header == "mm-balanced" else DataPlane.require_all)([(header, value)])
    assert DataPlane.names_from_headers([("mm-model-id", "a"), ("x", "y"), ("mm-model-id-bin", b"b")]) == ["a", "b"]
    assert DataPlane.names_from_headers([("mm-vmodel-id", "v")]) == ["v"]
    with pytest.raises(InvalidArgument, match="only one of model id and vmodel id"):
        DataPlane.names_from_headers([("mm-model-id", "a"), ("mm-vmodel-id", "v")])


async def test_balanced_calls_go_to_any_copy_not_only_the_idle_one() -> None:
    """mm-balanced: the client spreads its requests; a copy with a call in flight is still chosen."""
    plane = _plane()
    release, arrived = asyncio.Event(), asyncio.Event()

    async def hold(endpoint: Endpoint, budget: float) -> str:
        arrived.set()
        await release.wait()
        return endpoint.pod_id

    async def answer(endpoint: Endpoint, budget: float) -> str:
        return endpoint.pod_id

    first = asyncio.create_task(plane.call("m", hold, budget=5))
    await arrived.wait()
    answered = {await plane.call("m", answer, budget=5, balanced=True) for _ in range(40)}
    assert answered == {"a", "b"}
    release.set()
    await first
