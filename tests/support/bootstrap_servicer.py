"""The gRPC service behind the server-bootstrap tests (system/serving/test_bootstrap.py and
test_service_app.py): a ``GatewayService`` that raises the error a request names, and a health
check helper."""

from __future__ import annotations

import asyncio

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vlm.v1 import gateway_pb2, gateway_pb2_grpc

from tandem import errors

SECRET = "db-7.internal.example:6379 at 0x7f3a2b1c <object Foo at 0xdeadbeef>"

RAISES: dict[str, BaseException] = {
    "invalid": errors.InvalidInput("image is not a PNG, JPEG, WebP, GIF or BMP file"),
    "not_found": errors.NotFound("session 'abc' does not exist"),
    "overloaded": errors.Overloaded("too many requests in flight; retry later"),
    "unavailable": errors.Unavailable("the server is draining"),
    "deadline": errors.DeadlineExceeded("the deadline passed while encoding"),
    "conflict": errors.Conflict("another turn of this session is running"),
    "unauthenticated": errors.Unauthenticated("bad token"),
    "timeout": TimeoutError(SECRET),
    "bug": RuntimeError(SECRET),
    "key": KeyError(SECRET),
    "empty_domain": errors.NotFound(),
}


class Servicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Raises the error named by the request; echoes otherwise."""

    async def GetSession(self, request, context):  # type: ignore[no-untyped-def]
        if request.session_id in RAISES:
            raise RAISES[request.session_id]
        return gateway_pb2.GetSessionResponse(session=gateway_pb2.Session(session_id=request.session_id))

    async def Generate(self, request, context):  # type: ignore[no-untyped-def]
        name, _, when = request.request_id.partition("@")
        if when == "after":
            yield gateway_pb2.GenerateResponse(text="first")
        if name in RAISES:
            raise RAISES[name]
        for word in ("a", "b", "c"):
            yield gateway_pb2.GenerateResponse(text=word)
            await asyncio.sleep(0.05 if when == "slow" else 0)


def register(server: aio.Server) -> None:
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(Servicer(), server)


SERVICE = "vlm.v1.GatewayService"


async def health_status(channel: aio.Channel, service: str = "") -> int:
    """The health status the server on ``channel`` reports for ``service`` ("" = the server)."""
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return reply.status
