"""A ``GatewayService`` servicer (a fake, or the real servicer over a fake gateway) on a real gRPC
server on port 0, so a test drives the public API without models:

* ``threaded_gateway``: a thread-pool server, for blocking clients and the ``tandem`` CLI;
* ``served_gateway``: the services' own bootstrap (``GrpcServer``), with a stub to call it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from concurrent import futures

import grpc
from grpc import aio
from vlm.v1 import gateway_pb2, gateway_pb2_grpc

from tandem.serving.bootstrap import GrpcServer, channel_options
from tandem.serving.config import ServerConfig

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name


@contextlib.contextmanager
def threaded_gateway(servicer: gateway_pb2_grpc.GatewayServiceServicer) -> Iterator[str]:
    """``servicer`` on a thread-pool server; yields its address and stops it at the end."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@contextlib.asynccontextmanager
async def served_gateway(servicer: object) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:
    """``servicer`` on a ``GrpcServer``; yields a stub over a channel that takes 64 MiB messages,
    and drains the server at the end."""

    def register(server: aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)

    server = GrpcServer(ServerConfig(port=0, grace_seconds=0.1), [register], [SERVICE])
    port = await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(64 << 20)) as channel:
            yield gateway_pb2_grpc.GatewayServiceStub(channel)
    finally:
        await server.drain()
