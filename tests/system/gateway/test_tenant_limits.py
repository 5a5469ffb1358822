"""Per-tenant limits, on a real Redis and on the in-memory store: system prompt size, live
sessions and stored bytes (session records and the image bytes a tenant sent), each refused
with a message naming the limit and its value; one tenant's use never counts against another."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from vlm.v1 import gateway_pb2

from gateway.messages import ImageRef, Message, Usage
from gateway.session_redis import RedisSessionStore
from gateway.sessions import CommittedTurn, Sessions, SessionSettings, SessionStore
from tandem.errors import InvalidInput, Overloaded
from tandem.redis_local import LocalRedis
from tests.support.fake_system import StartSystem, collect, image, status_of, text, user

IMAGE = "cd" * 32


async def test_a_large_system_prompt_is_refused(store: SessionStore) -> None:
    sessions = Sessions(store, SessionSettings(max_system_prompt_bytes=10))
    await sessions.create("é" * 5, tenant="alice")  # 10 bytes of UTF-8
    with pytest.raises(InvalidInput, match=r"at most 10 bytes \(--max-system-prompt-bytes\)"):
        await sessions.create("é" * 6, tenant="alice")


async def test_live_sessions_per_tenant(store: SessionStore) -> None:
    sessions = Sessions(store, SessionSettings(max_sessions_per_tenant=2))
    first = await sessions.create(tenant="alice")
    await sessions.create(tenant="alice")
    with pytest.raises(Overloaded, match=r"2 live sessions.*--max-sessions-per-tenant"):
        await sessions.create(tenant="alice")
    await sessions.create(tenant="bob")  # bob's count is his own
    await sessions.delete(first.session_id, "alice")
    await sessions.create(tenant="alice")


async def test_stored_bytes_per_tenant(store: SessionStore) -> None:
    sessions = Sessions(store, SessionSettings(max_stored_bytes_per_tenant=1200))
    prompt = "p" * 300  # a record of about 360 bytes
    made = [await sessions.create(prompt, tenant="alice") for _ in range(3)]
    assert 900 < await store.usage("alice") <= 1200
    with pytest.raises(Overloaded, match=r"1200 bytes.*--max-stored-bytes-per-tenant"):
        await sessions.create(prompt, tenant="alice")
    await sessions.create(prompt, tenant="bob")
    await sessions.delete(made[0].session_id, "alice")
    await sessions.check_storage("alice")
    await store.claim_images("alice", [(IMAGE, 5000)], ttl_seconds=60)
    assert await store.has_images("alice", [IMAGE]) and not await store.has_images("bob", [IMAGE])
    with pytest.raises(Overloaded, match="--max-stored-bytes-per-tenant"):
        await sessions.check_storage("alice")
    await sessions.check_storage("bob")


async def test_usage_follows_expiry(redis_server: LocalRedis) -> None:
    store = RedisSessionStore.connect(redis_server.url, f"t{uuid.uuid4().hex[:8]}")
    try:
        sessions = Sessions(store, SessionSettings())
        await sessions.create("p" * 100, ttl_seconds=1, tenant="alice")
        await store.claim_images("alice", [(IMAGE, 500)], ttl_seconds=1)
        assert await store.usage("alice") > 600
        await asyncio.sleep(1.2)
        assert await store.usage("alice") == 0 and not await store.has_images("alice", [IMAGE])
    finally:
        await store.close()


async def test_the_gateway_refuses_with_the_limit_named(start_system: StartSystem) -> None:
    keys = ("alice=tok-alice", "bob=tok-bob")
    system = await start_system(
        api_key=keys, max_stored_bytes_per_tenant=4000, max_system_prompt_bytes=64, max_sessions_per_tenant=1
    )
    alice, bob = ((("authorization", f"Bearer tok-{n}"),) for n in ("alice", "bob"))
    picture = b"\x89PNG\r\n\x1a\n" + bytes(5000)

    def generate(who: tuple[tuple[str, str], ...], *parts: gateway_pb2.Part) -> object:
        return system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(*parts)]), metadata=who)

    await collect(generate(alice, image(data=picture), text("what is it?")))
    code, details = await status_of(generate(alice, image(data=picture + b"!"), text("and this?")))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-stored-bytes-per-tenant" in details
    await collect(generate(alice, text("no image: nothing to store")))
    with pytest.raises(grpc.aio.AioRpcError) as big:
        request = gateway_pb2.CreateSessionRequest(system_prompt="x" * 65)
        await system.stub.CreateSession(request, metadata=bob)
    assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "64 bytes (--max-system-prompt-bytes)" in (big.value.details() or "")
    await system.stub.CreateSession(gateway_pb2.CreateSessionRequest(), metadata=bob)
    with pytest.raises(grpc.aio.AioRpcError) as many:
        await system.stub.CreateSession(gateway_pb2.CreateSessionRequest(), metadata=bob)
    assert many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-sessions-per-tenant" in (many.value.details() or "")
    await collect(generate(bob, image(data=picture), text("what is it?")))  # alice's bytes are hers


async def test_deleting_a_session_drops_its_image_claims(store: SessionStore) -> None:
    sessions = Sessions(store, SessionSettings())
    state = await sessions.create(tenant="alice")
    other = "ef" * 32  # in the history, never claimed by alice: nothing to drop, still fine
    await store.claim_images("alice", [(IMAGE, 700)], ttl_seconds=60)
    user = Message("user", (ImageRef(IMAGE, 4), ImageRef(other, 4), "look"))
    async with sessions.turn(state.session_id, "alice") as turn:
        await turn.commit(user, CommittedTurn("", "a cat", (1,), "stop", Usage(), (IMAGE, other)))
    assert await store.usage("alice") > 700
    await sessions.delete(state.session_id, "alice")
    assert not await store.has_images("alice", [IMAGE])
    assert await store.usage("alice") == 0
