"""A fixed-reply KServe v2 model server (gRPC and REST) plus a one-route fake scheduler, in one process.

Lets the bench measure the router's own cost: the model server does no work, and the
scheduler's route stream says model "fake" lives at this process's addresses.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import uvloop
from aiohttp import web

from meshserve.common.proto.kserve.v2 import grpc_predict_v2_pb2 as v2
from meshserve.common.proto.meshserve.v1 import scheduler_pb2 as spb
from meshserve.common.proto.meshserve.v1 import scheduler_pb2_grpc as sgrpc

REST_REPLY = b'{"model_name":"fake","outputs":[{"name":"out","datatype":"INT64","shape":[1],"data":[1]}]}'
REPLY = v2.ModelInferResponse(
    model_name="fake", outputs=[v2.ModelInferResponse.InferOutputTensor(name="out", datatype="INT64", shape=[1])],
    raw_output_contents=[b"\x01" + b"\x00" * 7],
).SerializeToString()


class FixedReply(grpc.GenericRpcHandler):
    def __init__(self) -> None:
        async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return REPLY

        self.handler = grpc.unary_unary_rpc_method_handler(infer)

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.handler if details.method.endswith("/ModelInfer") else None  # type: ignore[attr-defined]


class OneRouteScheduler(sgrpc.SchedulerServicer):
    def __init__(self, address: str, rest_address: str) -> None:
        self.endpoint = spb.Endpoint(pod_id="fake-pod", grpc_address=address, rest_address=rest_address)

    async def WatchRoutes(self, request, context):  # type: ignore[no-untyped-def]
        yield spb.RouteUpdate(snapshot=True, version=1, routes=[spb.Route(model_id="fake", endpoints=[self.endpoint])])
        await asyncio.Event().wait()

    async def EnsureLoaded(self, request, context):  # type: ignore[no-untyped-def]
        return spb.EnsureLoadedResponse(endpoints=[self.endpoint])

    async def ReportUsage(self, request, context):  # type: ignore[no-untyped-def]
        return spb.ReportUsageResponse()


async def rest_infer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=REST_REPLY, content_type="application/json")


async def serve(model_port: int, scheduler_port: int, rest_port: int) -> None:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    model = grpc.aio.server(options=options)
    model.add_generic_rpc_handlers((FixedReply(),))
    model.add_insecure_port(f"127.0.0.1:{model_port}")
    scheduler = grpc.aio.server()
    sgrpc.add_SchedulerServicer_to_server(
        OneRouteScheduler(f"127.0.0.1:{model_port}", f"http://127.0.0.1:{rest_port}"), scheduler
    )
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v2/models/{name}/infer", rest_infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rest_port).start()
    scheduler.add_insecure_port(f"127.0.0.1:{scheduler_port}")
    await model.start()
    await scheduler.start()
    await model.wait_for_termination()


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
