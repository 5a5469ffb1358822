"""The language worker behind the gateway: it takes the internal token only (never a public
key), scopes its prefix cache by tenant so no tenant reuses or measures another's cached prefix,
accepts ReleaseSession (the tenant's blocks leave by LRU), and names its model without a path."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, llm_pb2, llm_pb2_grpc

from gateway.app import GatewayApp
from gateway.config import GatewayConfig
from llm_service.config import LlmConfig
from llm_service.server import LanguageApp
from tandem.redis_local import LocalRedis
from tests.support.gateway_stack import engine_idle

pytestmark = pytest.mark.asyncio(loop_scope="module")

INTERNAL = (("authorization", "Bearer internal-secret"),)
PUBLIC = (("authorization", "Bearer public-key"),)
SESSION = "5e55" * 8
PROMPT = "Describe the red car near the water, then the small boat behind it."


@dataclass
class Worker:
    app: LanguageApp
    stub: llm_pb2_grpc.LanguageServiceStub
    path: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worker(checkpoint) -> AsyncIterator[Worker]:  # type: ignore[no-untyped-def]
    path = checkpoint("llama")
    config = LlmConfig(model=str(path), port=0, auth_token="public-key", internal_token="internal-secret")
    app = LanguageApp(config)
    port = await app.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Worker(app, llm_pb2_grpc.LanguageServiceStub(channel), path)
    finally:
        await app.stop()


async def turn(worker: Worker, tenant: str, text: str, session: str = SESSION) -> common_pb2.Usage:
    message = common_pb2.Message(role=common_pb2.ROLE_USER, parts=[common_pb2.ContentPart(text=text)])
    request = llm_pb2.GenerateTokensRequest(
        messages=[message],
        sampling=common_pb2.SamplingParams(max_new_tokens=4),
        session_id=session,
        tenant=tenant,
    )
    responses = [r async for r in worker.stub.GenerateTokens(request, metadata=INTERNAL, timeout=60)]
    assert await engine_idle(worker.app)  # the finished row has left its KV in the prefix cache
    return responses[-1].usage


async def test_only_the_internal_token_opens_the_worker(worker: Worker) -> None:
    for metadata in [PUBLIC, ()]:
        with pytest.raises(aio.AioRpcError) as refused:
            await worker.stub.GetLanguageInfo(llm_pb2.GetLanguageInfoRequest(), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = (await worker.stub.GetLanguageInfo(llm_pb2.GetLanguageInfoRequest(), metadata=INTERNAL)).info
    assert info.model == worker.path.name and "/" not in info.model


async def test_kv_reuse_is_scoped_by_tenant(worker: Worker) -> None:
    first = PROMPT + " First."
    assert (await turn(worker, "alice", first)).cached_tokens == 0
    assert (await turn(worker, "alice", first + " And the sky?")).cached_tokens > 0
    # the same words from another tenant, in the same session id: nothing reused, no length seen
    assert (await turn(worker, "bob", first + " And the sky?")).cached_tokens == 0
    # a tenant's other sessions (and requests without one) share its blocks
    assert (await turn(worker, "bob", first + " And the sea?", session="f00d" * 8)).cached_tokens > 0


async def test_release_session_is_accepted_and_the_tenant_keeps_its_blocks(worker: Worker) -> None:
    second = PROMPT + " Second."
    await turn(worker, "alice", second)
    request = llm_pb2.ReleaseSessionRequest(session_id=SESSION, tenant="alice")
    await worker.stub.ReleaseSession(request, metadata=INTERNAL)
    assert (await turn(worker, "alice", second + " Again.")).cached_tokens > 0  # left to LRU
    unknown = llm_pb2.ReleaseSessionRequest(session_id="0" * 32, tenant="carol")
    await worker.stub.ReleaseSession(unknown, metadata=INTERNAL)  # nothing held: still fine


async def test_the_gateway_reaches_the_worker_with_the_internal_token_and_delete_releases(
    worker: Worker, redis_server: LocalRedis
) -> None:
    port = worker.app.server.port
    config = GatewayConfig(
        llm_addresses=(f"127.0.0.1:{port}",),
        redis_url=redis_server.url,
        cache_prefix=f"t{uuid.uuid4().hex[:8]}",
        port=0,
        grace_seconds=0,
        api_key=("alice=tok-alice",),
        internal_token="internal-secret",
    )
    gateway = GatewayApp(config)
    alice = (("authorization", "Bearer tok-alice"),)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{await gateway.start()}") as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            info = await stub.GetModelInfo(gateway_pb2.GetModelInfoRequest(), metadata=alice)
            assert info.info.model == worker.path.name  # the public id: a name, no path
            created = await stub.CreateSession(gateway_pb2.CreateSessionRequest(), metadata=alice)
            sid = created.session.session_id
            parts, sampling = [gateway_pb2.Part(text=PROMPT)], common_pb2.SamplingParams(max_new_tokens=3)
            chat = gateway_pb2.ChatRequest(session_id=sid, parts=parts, sampling=sampling)
            answer = [r async for r in stub.Chat(chat, metadata=alice)]
            assert answer[-1].finish_reason
            assert await engine_idle(worker.app)
            await stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=sid), metadata=alice)
    finally:
        await gateway.stop()
