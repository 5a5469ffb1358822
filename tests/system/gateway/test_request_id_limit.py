"""``request_id`` on Generate and Chat is bounded: 128 printable ASCII characters at most.

Issue 11, finding 10: any request id was accepted, and a session keeps the id of every committed
turn (a 10 MB id per turn went into Redis and the logs). The servicer runs here on a real server
over a fake gateway that records what reaches it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from gateway.convert import MAX_REQUEST_ID_LENGTH, request_id_from_pb
from gateway.messages import Chunk
from gateway.servicer import GatewayServicer
from tandem.errors import InvalidInput
from tests.support.gateway_server import served_gateway


class RecordingGateway:
    """Answers every generation with one chunk and records the request ids it was given."""

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    async def _answer(self, request_id: str) -> AsyncGenerator[Chunk, None]:
        self.request_ids.append(request_id)
        yield Chunk("ok", (1,), "stop")

    def generate(self, messages: Any, sampling: Any, request_id: str, *rest: Any, **kw: Any) -> Any:
        return self._answer(request_id)

    def chat(self, session_id: str, parts: Any, sampling: Any, request_id: str, *rest: Any, **kw: Any) -> Any:
        return self._answer(request_id)


@pytest.fixture
async def served() -> AsyncIterator[tuple[RecordingGateway, gateway_pb2_grpc.GatewayServiceStub]]:
    fake = RecordingGateway()
    servicer = GatewayServicer(fake)  # type: ignore[arg-type]
    async with served_gateway(servicer) as stub:
        yield fake, stub


def _generate(request_id: str) -> gateway_pb2.GenerateRequest:
    message = gateway_pb2.ChatMessage(role=common_pb2.ROLE_USER, parts=[gateway_pb2.Part(text="hi")])
    return gateway_pb2.GenerateRequest(messages=[message], request_id=request_id)


def _chat(request_id: str) -> gateway_pb2.ChatRequest:
    return gateway_pb2.ChatRequest(
        session_id="s" * 32, parts=[gateway_pb2.Part(text="hi")], request_id=request_id
    )


TOO_LONG = "r" * (MAX_REQUEST_ID_LENGTH + 1)


@pytest.mark.parametrize("bad", [TOO_LONG, "x" * (10 << 20), "tab\there", "nul\x00", "caf\u00e9", "line\n"])
@pytest.mark.parametrize("rpc", ["Generate", "Chat"])
async def test_bad_request_ids_are_invalid_argument_naming_the_limit(
    served: tuple[RecordingGateway, gateway_pb2_grpc.GatewayServiceStub], rpc: str, bad: str
) -> None:
    fake, stub = served
    call = stub.Generate(_generate(bad)) if rpc == "Generate" else stub.Chat(_chat(bad))
    with pytest.raises(aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters" in (info.value.details() or "")
    assert not fake.request_ids  # refused before the gateway saw it


@pytest.mark.parametrize("rpc", ["Generate", "Chat"])
async def test_ordinary_request_ids_pass(
    served: tuple[RecordingGateway, gateway_pb2_grpc.GatewayServiceStub], rpc: str
) -> None:
    fake, stub = served
    longest = "retry-" + "a" * (MAX_REQUEST_ID_LENGTH - 6)
    for request_id in ("", "0f3c-turn 7 (retry)", longest):
        call = stub.Generate(_generate(request_id)) if rpc == "Generate" else stub.Chat(_chat(request_id))
        assert [r.text async for r in call] == ["ok"]
    assert fake.request_ids == ["", "0f3c-turn 7 (retry)", longest]


def test_the_rule() -> None:
    assert request_id_from_pb("a" * MAX_REQUEST_ID_LENGTH) == "a" * MAX_REQUEST_ID_LENGTH
    with pytest.raises(InvalidInput, match="got 129 characters"):
        request_id_from_pb(TOO_LONG)
