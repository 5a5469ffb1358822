"""Faults on the real system: SIGTERM, SIGKILL and a Redis outage (TESTPLAN 6, 12, 22).

Language workers run as real ``python -m llm_service`` children (``tandem.launcher``) on the
tiny text-only Llama checkpoint, which streams slowly enough on a CPU (tens of tokens per
second) for a stream to be in flight when the signal lands. The Redis outage runs the tiny
LLaVA in process (vision, language, gateway) on its own ``LocalRedis`` that the test stops and
starts again. Every process and server started here is stopped in a ``finally``.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, llm_pb2, llm_pb2_grpc

from gateway.app import GatewayApp
from gateway.config import GatewayConfig
from gateway.routing import rendezvous_order
from llm_service.config import LlmConfig
from llm_service.server import LanguageApp
from tandem.redis_local import LocalRedis
from tests.support.gateway_stack import messages, part, png
from tests.support.processes import gateway_over, launcher, serving_llms, spawn_llm

GRACE = 3.0
PROMPT = "hi"  # the tiny Llama greedily runs past 900 tokens on this one, no early EOS
START_TIMEOUT = 60.0
STORE_DOWN = "the session store is unavailable; retry later"


def tokens_request(n: int) -> llm_pb2.GenerateTokensRequest:
    text = common_pb2.ContentPart(text=PROMPT)
    return llm_pb2.GenerateTokensRequest(
        messages=[common_pb2.Message(role=common_pb2.ROLE_USER, parts=[text])],
        sampling=common_pb2.SamplingParams(max_new_tokens=n),
    )


@dataclass
class Stream:
    """One streaming call read to its end in a task: tokens, final status and when it ended."""

    call: Any
    tokens: list[int] = field(default_factory=list)
    finish: int = common_pb2.FINISH_REASON_UNSPECIFIED
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    ended_at: float = 0.0
    flowing: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, flowing_after: int = 2) -> None:
        try:
            while (chunk := await self.call.read()) is not aio.EOF:
                self.tokens += list(chunk.token_ids)
                self.finish = chunk.finish_reason or self.finish
                if len(self.tokens) >= flowing_after:
                    self.flowing.set()
        except aio.AioRpcError as err:
            self.code, self.details = err.code(), err.details() or ""
        finally:
            self.ended_at = time.monotonic()
            self.flowing.set()


def follow(call: Any) -> tuple[Stream, asyncio.Task[None]]:
    stream = Stream(call)
    return stream, asyncio.ensure_future(stream.run())


def ended_cleanly(stream: Stream, n: int) -> bool:
    """Finished in full, or cut at the end of the grace period with a status (not a hang)."""
    if stream.code == grpc.StatusCode.OK:
        return stream.finish != common_pb2.FINISH_REASON_UNSPECIFIED and len(stream.tokens) <= n
    return stream.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


async def test_sigterm_drains_a_language_worker_and_exits_zero(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with launcher(tmp_path) as spawned:
        child = spawn_llm(spawned, "llm", checkpoint("llama"), "--grace-seconds", str(GRACE))
        await asyncio.to_thread(spawned.wait_serving, [child], START_TIMEOUT)
        async with aio.insecure_channel(f"127.0.0.1:{child.port}") as channel:
            stub = llm_pb2_grpc.LanguageServiceStub(channel)
            streams = [follow(stub.GenerateTokens(tokens_request(n), timeout=60)) for n in (900, 60)]
            await asyncio.wait_for(asyncio.gather(*(s.flowing.wait() for s, _ in streams)), 30)
            assert not streams[0][1].done()  # the CPU's speed varies ~10x: only the long one is sure
            child.process.send_signal(signal.SIGTERM)
            signalled, before = time.monotonic(), [len(s.tokens) for s, _ in streams]
            await asyncio.sleep(0.3)
            with pytest.raises(aio.AioRpcError) as refused:
                await stub.GetLanguageInfo(llm_pb2.GetLanguageInfoRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.wait_for(asyncio.gather(*(task for _, task in streams)), GRACE + 5)
        for (stream, _), n, seen in zip(streams, (900, 60), before, strict=True):
            assert ended_cleanly(stream, n), (stream.code, stream.details, stream.finish)
            assert stream.ended_at - signalled < GRACE + 3
            if stream.ended_at > signalled + 0.1:
                assert len(stream.tokens) > seen  # draining does not pause a running stream
        code = await asyncio.to_thread(child.process.wait, GRACE + 5)
        assert code == 0 and time.monotonic() - signalled < GRACE + 5
        assert "Traceback" not in child.tail(200)


async def sessions_on(stub: Any, addresses: tuple[str, str], each: int) -> dict[str, list[str]]:
    """``each`` new sessions whose rendezvous replica is each of ``addresses``."""
    found: dict[str, list[str]] = {a: [] for a in addresses}
    for _ in range(60):
        sid = (await stub.CreateSession(gateway_pb2.CreateSessionRequest())).session.session_id
        home = rendezvous_order(sid, addresses)[0]
        if len(found[home]) < each:
            found[home].append(sid)
        if all(len(v) == each for v in found.values()):
            return found
    raise AssertionError("rendezvous hashing never picked one of the replicas")


def chat(stub: Any, sid: str, n: int, timeout: float = 60) -> Any:
    request = gateway_pb2.ChatRequest(
        session_id=sid,
        parts=[part(PROMPT)],
        sampling=common_pb2.SamplingParams(max_new_tokens=n),
    )
    return stub.Chat(request, timeout=timeout)


async def test_replica_killed_mid_stream_fails_its_calls_and_the_survivor_serves(  # type: ignore[no-untyped-def]
    checkpoint, redis_server: LocalRedis, tmp_path: Path
) -> None:
    with launcher(tmp_path) as spawned:
        children = await serving_llms(spawned, checkpoint("llama"), ("llm-a", "llm-b"), START_TIMEOUT)
        victim, survivor = (f"127.0.0.1:{c.port}" for c in children)
        async with gateway_over((victim, survivor), redis_server.url) as stub:
            homes = await sessions_on(stub, (victim, survivor), 2)
            doomed = [follow(chat(stub, sid, 900)) for sid in homes[victim]]
            healthy = [follow(chat(stub, sid, 40)) for sid in homes[survivor]]
            everyone = [*doomed, *healthy]
            await asyncio.wait_for(asyncio.gather(*(s.flowing.wait() for s, _ in everyone)), 30)
            assert not any(task.done() for _, task in doomed)
            children[0].process.kill()
            killed = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*(task for _, task in everyone)), 45)
            for stream, _ in doomed:
                assert stream.code == grpc.StatusCode.UNAVAILABLE, (stream.code, stream.details)
                assert stream.details == "the language service is unavailable; retry later"
                assert stream.ended_at - killed < 5 and 0 < len(stream.tokens) < 900
            for stream, _ in healthy:
                assert stream.code == grpc.StatusCode.OK, (stream.code, stream.details)
                assert stream.finish != common_pb2.FINISH_REASON_UNSPECIFIED and stream.tokens
            # New calls skip the dead replica (whatever their prefix key); its sessions move.
            for _ in range(2):
                fresh, task = follow(
                    stub.Generate(
                        gateway_pb2.GenerateRequest(
                            messages=messages([("user", ["hi"])]),
                            sampling=common_pb2.SamplingParams(max_new_tokens=4),
                        ),
                        timeout=20,
                    )
                )
                await task
                assert (fresh.code, len(fresh.tokens)) == (grpc.StatusCode.OK, 4), fresh.details
            moved, task = follow(chat(stub, homes[victim][0], 4, timeout=20))
            await task
            assert (moved.code, len(moved.tokens)) == (grpc.StatusCode.OK, 4), moved.details
        assert children[0].exited() == -signal.SIGKILL and children[1].exited() is None


async def reply_tokens(call: Any) -> list[int]:
    stream, task = follow(call)
    await task
    assert stream.code == grpc.StatusCode.OK, (stream.code, stream.details)
    assert stream.finish != common_pb2.FINISH_REASON_UNSPECIFIED
    return stream.tokens


async def embedding_keys(url: str, prefix: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return len([k async for k in client.scan_iter(match=f"{prefix}:emb:*")])
    finally:
        await client.aclose()


async def test_redis_outage_keeps_generate_working_and_sessions_recover(checkpoint) -> None:  # type: ignore[no-untyped-def]
    from vision_service.config import VisionConfig
    from vision_service.inprocess import running_vision

    path, prefix = str(checkpoint("llava")), f"outage{uuid.uuid4().hex[:8]}"
    image = png(11)
    ask = messages([("user", [image, "What is in this image?"])])
    with LocalRedis() as redis_server:
        vision_config = VisionConfig(model=path, redis_url=redis_server.url, port=0, cache_prefix=prefix)
        async with running_vision(vision_config) as vision:
            llm = LanguageApp(
                LlmConfig(model=path, redis_url=redis_server.url, port=0, device="cpu", cache_prefix=prefix)
            )
            llm_port = await llm.start()
            try:
                config = GatewayConfig(
                    llm_addresses=(f"127.0.0.1:{llm_port}",),
                    vision_addresses=(vision.address,),
                    redis_url=redis_server.url,
                    cache_prefix=prefix,
                    port=0,
                    grace_seconds=1,
                )
                gateway = GatewayApp(config)
                port = await gateway.start()
                try:
                    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
                        await _outage_and_recovery(stub, redis_server, prefix, ask)
                finally:
                    await gateway.stop()
            finally:
                await llm.stop()


async def _outage_and_recovery(stub: Any, redis_server: LocalRedis, prefix: str, ask: Any) -> None:
    sampling = common_pb2.SamplingParams(max_new_tokens=10)
    expected = await reply_tokens(stub.Generate(gateway_pb2.GenerateRequest(messages=ask, sampling=sampling)))
    sid = (await stub.CreateSession(gateway_pb2.CreateSessionRequest())).session.session_id
    assert await embedding_keys(redis_server.url, prefix) > 0
    # Redis goes away while a Generate and a session turn stream: the Generate has what it needs
    # and finishes; the turn streams but cannot be saved, so it ends UNAVAILABLE (not a silent OK).
    long = common_pb2.SamplingParams(max_new_tokens=200)
    generating, generated = follow(
        stub.Generate(gateway_pb2.GenerateRequest(messages=ask, sampling=long), timeout=30)
    )
    turn = gateway_pb2.ChatRequest(session_id=sid, parts=ask[0].parts, sampling=long)
    chatting, chatted = follow(stub.Chat(turn, timeout=30))
    await asyncio.gather(generating.flowing.wait(), chatting.flowing.wait())
    await asyncio.to_thread(redis_server.stop)
    started = time.monotonic()
    await asyncio.gather(generated, chatted)
    assert generating.code == grpc.StatusCode.OK and generating.finish != common_pb2.FINISH_REASON_UNSPECIFIED
    assert (chatting.code, chatting.details) == (grpc.StatusCode.UNAVAILABLE, STORE_DOWN)
    # Generate needs no Redis: the embedding comes back inline from the vision service.
    for _ in range(2):
        request = gateway_pb2.GenerateRequest(messages=ask, sampling=sampling)
        assert await reply_tokens(stub.Generate(request, timeout=20)) == expected
    for call in (
        stub.CreateSession(gateway_pb2.CreateSessionRequest(), timeout=10),
        stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid), timeout=10),
    ):
        with pytest.raises(aio.AioRpcError) as down:
            await call
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert down.value.details() == STORE_DOWN
    refused, task = follow(stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=ask[0].parts), timeout=10))
    await task
    assert (refused.code, refused.details) == (grpc.StatusCode.UNAVAILABLE, STORE_DOWN)
    assert time.monotonic() - started < 15  # every answer came fast, nothing waited on Redis
    await asyncio.to_thread(redis_server.start)
    await redis_recovered(stub)
    sid = (await stub.CreateSession(gateway_pb2.CreateSessionRequest())).session.session_id
    chat_request = gateway_pb2.ChatRequest(session_id=sid, parts=ask[0].parts, sampling=sampling)
    assert await reply_tokens(stub.Chat(chat_request, timeout=20)) == expected
    session = (await stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert len(session.messages) == 2
    stop = time.monotonic() + 15  # the vision service's breaker lets writes through again
    while await embedding_keys(redis_server.url, prefix) == 0:
        assert time.monotonic() < stop, "embeddings are never stored again after Redis came back"
        await reply_tokens(stub.Generate(gateway_pb2.GenerateRequest(messages=ask, sampling=sampling)))
        await asyncio.sleep(0.5)


async def redis_recovered(stub: Any, within: float = 15.0) -> None:
    stop = time.monotonic() + within
    while True:
        try:
            await stub.CreateSession(gateway_pb2.CreateSessionRequest(), timeout=5)
            return
        except aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < stop, err.details()
            await asyncio.sleep(0.3)
