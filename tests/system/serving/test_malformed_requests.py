"""Request bytes that do not parse are INVALID_ARGUMENT "malformed request" on every method.

Issue 11, finding 10: grpc.aio answered a request its deserializer could not parse with UNKNOWN
and the exception's class repr. Every service runs on ``GrpcServer``; here it serves all three
Tandem services (bare generated servicers: a parse failure must be refused before any servicer
code runs) plus the standard health service, and every unary method is sent garbage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from vlm.v1 import gateway_pb2, gateway_pb2_grpc, llm_pb2, llm_pb2_grpc, vision_pb2, vision_pb2_grpc

from tandem.serving.bootstrap import GrpcServer, channel_options
from tandem.serving.config import ServerConfig
from tandem.serving.interceptor import MALFORMED_MESSAGE

SERVICES = [
    gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    llm_pb2.DESCRIPTOR.services_by_name["LanguageService"],
    vision_pb2.DESCRIPTOR.services_by_name["VisionService"],
]
METHODS = [
    (f"/{service.full_name}/{method.name}", method.server_streaming)
    for service in SERVICES
    for method in service.methods
    if not method.client_streaming
] + [("/grpc.health.v1.Health/Check", False)]
TRUNCATED = b"\x0a\xff\xff\xff\xff"  # field 1, length-delimited, with a length varint that never ends
BAD_UTF8 = b"\x0a\x03\xed\xa0\x80"  # field 1 as a string holding a UTF-8-encoded lone surrogate


def _register(server: aio.Server) -> None:
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(gateway_pb2_grpc.GatewayServiceServicer(), server)
    llm_pb2_grpc.add_LanguageServiceServicer_to_server(llm_pb2_grpc.LanguageServiceServicer(), server)
    vision_pb2_grpc.add_VisionServiceServicer_to_server(vision_pb2_grpc.VisionServiceServicer(), server)


@pytest.fixture
async def channel() -> AsyncIterator[aio.Channel]:
    server = GrpcServer(ServerConfig(port=0, grace_seconds=0.1), [_register], [s.full_name for s in SERVICES])
    port = await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(1 << 20)) as channel:
        yield channel
    await server.drain()


async def _call(channel: aio.Channel, path: str, streaming: bool, raw: bytes) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        if streaming:
            async for _ in channel.unary_stream(path, None, None)(raw, timeout=10):
                pass
        else:
            await channel.unary_unary(path, None, None)(raw, timeout=10)
    return info.value


@pytest.mark.parametrize(("path", "streaming"), METHODS, ids=[path for path, _ in METHODS])
async def test_unparsable_bytes_are_invalid_argument(
    channel: aio.Channel, path: str, streaming: bool
) -> None:
    error = await _call(channel, path, streaming, TRUNCATED)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
    assert "class" not in (error.details() or "")


async def test_invalid_utf8_in_a_string_field_is_malformed(channel: aio.Channel) -> None:
    """The gRPC face of a lone surrogate: invalid UTF-8 in ``GenerateRequest.request_id``."""
    number = gateway_pb2.GenerateRequest.DESCRIPTOR.fields_by_name["request_id"].number
    raw = bytes([number << 3 | 2]) + BAD_UTF8[1:]
    error = await _call(channel, "/vlm.v1.GatewayService/Generate", True, raw)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)


async def test_well_formed_requests_still_reach_the_servicer(channel: aio.Channel) -> None:
    raw = gateway_pb2.GetModelInfoRequest().SerializeToString()
    error = await _call(channel, "/vlm.v1.GatewayService/GetModelInfo", False, raw)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED  # the bare servicer's answer
