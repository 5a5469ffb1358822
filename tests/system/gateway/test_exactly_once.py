"""Exactly-once turns through the real gateway and a real Redis: a commit caught by a frozen
Redis is settled, so what the client hears is what the session holds; HTTP's Idempotency-Key
replays a turn; a request id reused with another input is refused, not replayed."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import redis.asyncio as aioredis
from vlm.v1 import gateway_pb2

from tandem.redis_local import LocalRedis
from tests.support.fake_system import StartSystem, System, chat, new_session, status_of, text

FREEZE_SECONDS = 2


async def history(system: System, sid: str) -> int:
    got = await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))
    return len(got.session.messages)


async def test_a_turn_caught_by_a_frozen_redis_is_reported_as_it_was_stored(
    start_system: StartSystem, private_redis: LocalRedis
) -> None:
    """The commit times out in the gateway, yet Redis runs it when it wakes: the client must not
    hear UNAVAILABLE for a turn that is saved (its retry would add the turn twice)."""
    system = await start_system(redis_url=private_redis.url, redis_timeout_seconds=0.4)
    sid = await new_session(system)
    await chat(system, sid, text("first"))  # a committed turn: Redis has the commit script now
    system.llm.delay = 0.3
    admin = aioredis.Redis.from_url(private_redis.url, socket_timeout=FREEZE_SECONDS + 5)
    request = gateway_pb2.ChatRequest(session_id=sid, parts=[text("hello")])  # no request id
    call = system.stub.Chat(request, timeout=30)
    freeze: asyncio.Task[object] | None = None
    code = grpc.StatusCode.OK
    try:
        async for _ in call:  # freeze Redis while the answer streams: it catches the commit
            if freeze is None:
                freeze = asyncio.ensure_future(admin.execute_command("DEBUG", "SLEEP", FREEZE_SECONDS))
    except grpc.aio.AioRpcError as failed:
        code = failed.code()
        assert code == grpc.StatusCode.UNAVAILABLE and "not saved" in (failed.details() or "")
    assert freeze is not None
    await freeze
    await admin.aclose()
    stored = await history(system, sid)
    await asyncio.sleep(0.5)  # nothing lands later either
    assert await history(system, sid) == stored == (4 if code == grpc.StatusCode.OK else 2)


async def test_a_reused_request_id_with_another_input_is_refused(start_system: StartSystem) -> None:
    system = await start_system()
    sid = await new_session(system)
    first = await chat(system, sid, text("hello"), request_id="turn-1")
    again = await chat(system, sid, text("hello"), request_id="turn-1")
    assert again[0].replayed and again[0].text == "".join(r.text for r in first)
    other = gateway_pb2.ChatRequest(session_id=sid, parts=[text("something else")], request_id="turn-1")
    code, details = await status_of(system.stub.Chat(other))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "another input" in details
    assert await history(system, sid) == 2 and len(system.llm.requests) == 1


async def test_http_idempotency_key_replays_the_turn(start_system: StartSystem) -> None:
    system = await start_system(http_port=0)
    assert system.app.http is not None
    base = f"http://127.0.0.1:{system.app.http.port}/v1"
    sid = await new_session(system)

    async def complete(content: str, key: str) -> tuple[int, dict[str, object]]:
        body = {"model": "fake", "session_id": sid, "messages": [{"role": "user", "content": content}]}
        async with http.post(f"{base}/chat/completions", json=body, headers={"Idempotency-Key": key}) as r:
            return r.status, await r.json()

    async with aiohttp.ClientSession() as http:
        status, first = await complete("hello", "key-1")
        assert status == 200
        status, again = await complete("hello", "key-1")  # e.g. the OpenAI SDK retrying a 5xx
        assert status == 200 and again["choices"] == first["choices"]
        status, refused = await complete("bye", "key-1")
        assert status == 422 and refused["error"]["code"] == "idempotency_key_reused"  # type: ignore[index]
        assert (await complete("hello", "k" * 200))[0] == 400  # a key is a request id: bounded
    assert await history(system, sid) == 2 and len(system.llm.requests) == 1
