"""A request without max_new_tokens is fitted to the context by the language service.

Issue 11, finding 7: the gateway filled ``max_new_tokens=256`` before the language service's
fit-to-context logic could run, so every request whose prompt left fewer than 256 positions (a
session past half of a 512 context) failed unless the client set ``max_tokens``. Here the
language service has a 64-token context: without max_new_tokens a prompt near the limit is
answered up to the context end (finish reason length), one-off and in a session alike.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from gateway.app import GatewayApp
from gateway.config import GatewayConfig
from llm_service.config import LlmConfig
from llm_service.server import LanguageApp
from tandem.redis_local import LocalRedis

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONTEXT = 64
USER = common_pb2.ROLE_USER


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(checkpoint, redis_server: LocalRedis) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceStub]:  # type: ignore[no-untyped-def]
    prefix = f"fit{uuid.uuid4().hex[:8]}"
    async with contextlib.AsyncExitStack() as exits:
        llm = LanguageApp(
            LlmConfig(model=str(checkpoint("qwen2")), port=0, device="cpu", context_length=CONTEXT)
        )
        llm_port = await llm.start()
        exits.push_async_callback(llm.stop)
        config = GatewayConfig(
            llm_addresses=(f"127.0.0.1:{llm_port}",),
            redis_url=redis_server.url,
            cache_prefix=prefix,
            port=0,
            http_port=-1,
            grace_seconds=1,
        )
        gateway = GatewayApp(config)
        port = await gateway.start()
        exits.push_async_callback(gateway.stop)
        channel = await exits.enter_async_context(aio.insecure_channel(f"127.0.0.1:{port}"))
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def _words(n: int) -> str:
    return " ".join(["red car near water"] * n)


async def _collect(call: Any) -> list[Any]:
    return [response async for response in call]


async def test_a_prompt_near_the_context_end_is_answered_to_the_end(
    stub: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    message = gateway_pb2.ChatMessage(role=USER, parts=[gateway_pb2.Part(text=_words(6))])
    responses = await _collect(stub.Generate(gateway_pb2.GenerateRequest(messages=[message]), timeout=60))
    usage = responses[-1].usage
    assert CONTEXT - 256 < CONTEXT // 2 < usage.prompt_tokens < CONTEXT  # 256 would not have fit
    assert usage.prompt_tokens + usage.completion_tokens == CONTEXT
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH


async def test_a_session_keeps_answering_until_its_context_is_full(
    stub: gateway_pb2_grpc.GatewayServiceStub,
) -> None:
    created = await stub.CreateSession(gateway_pb2.CreateSessionRequest(system_prompt="Be brief."))
    session_id = created.session.session_id
    chat = gateway_pb2.ChatRequest(session_id=session_id, parts=[gateway_pb2.Part(text="hi")])
    chat.sampling.max_new_tokens = 4
    first = await _collect(stub.Chat(chat, timeout=60))
    assert first[-1].usage.prompt_tokens + 4 < CONTEXT // 2
    second = gateway_pb2.ChatRequest(session_id=session_id, parts=[gateway_pb2.Part(text=_words(3))])
    responses = await _collect(stub.Chat(second, timeout=60))
    usage = responses[-1].usage
    assert usage.prompt_tokens + usage.completion_tokens == CONTEXT
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
    with pytest.raises(aio.AioRpcError) as info:  # full: the next turn cannot fit, and says so
        await _collect(
            stub.Chat(gateway_pb2.ChatRequest(session_id=session_id, parts=chat.parts), timeout=60)
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context length" in (info.value.details() or "")
