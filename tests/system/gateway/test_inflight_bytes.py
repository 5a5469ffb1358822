"""Generate and Chat messages hold their size in the gateway's in-flight byte budget
(``--max-inflight-bytes``) until their stream ends: past it, RESOURCE_EXHAUSTED naming the flag.

Issue 11, finding 8: concurrent 40 MB bodies took the gateway to 1.2 GB. The servicer runs on a
real server over a fake gateway whose answers wait until the test lets them go.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from gateway.inflight import InflightBytes
from gateway.messages import Chunk
from gateway.servicer import GatewayServicer
from tests.support.gateway_server import served_gateway

MIB = 1 << 20


class HeldGateway:
    """Every answer starts, then waits for ``release``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def _answer(self) -> AsyncGenerator[Chunk, None]:
        self.started += 1
        yield Chunk("a", (1,))
        await self.release.wait()
        yield Chunk("", (), "stop")

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self._answer()

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        return self._answer()


@pytest.fixture
async def served() -> AsyncIterator[tuple[HeldGateway, gateway_pb2_grpc.GatewayServiceStub]]:
    fake = HeldGateway()
    servicer = GatewayServicer(fake, InflightBytes(3 * MIB, wait_seconds=0.2))  # type: ignore[arg-type]
    async with served_gateway(servicer) as stub:
        yield fake, stub


def _generate(size: int) -> gateway_pb2.GenerateRequest:
    image = gateway_pb2.Part(image=gateway_pb2.ImageSource(data=b"\x89PNG" + b"\0" * size))
    message = gateway_pb2.ChatMessage(role=common_pb2.ROLE_USER, parts=[image])
    return gateway_pb2.GenerateRequest(messages=[message])


def _chat(size: int) -> gateway_pb2.ChatRequest:
    image = gateway_pb2.Part(image=gateway_pb2.ImageSource(data=b"\x89PNG" + b"\0" * size))
    return gateway_pb2.ChatRequest(session_id="s" * 32, parts=[image])


async def test_requests_past_the_budget_are_resource_exhausted_until_bytes_come_back(
    served: tuple[HeldGateway, gateway_pb2_grpc.GatewayServiceStub],
) -> None:
    fake, stub = served
    first = stub.Generate(_generate(2 * MIB))
    await first.read()  # started: its 2 MiB are held while it waits
    for call in (stub.Generate(_generate(2 * MIB)), stub.Chat(_chat(2 * MIB))):
        with pytest.raises(aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-inflight-bytes" in (caught.value.details() or "")
    small = stub.Chat(_chat(MIB // 2))  # fits beside the first
    await small.read()
    fake.release.set()
    assert (await first.read()).finish_reason and (await small.read()).finish_reason
    again = [r async for r in stub.Generate(_generate(2 * MIB))]  # the bytes came back
    assert again[-1].finish_reason and fake.started == 3
