"""Session store and turn protocol, on a real Redis and on the in-memory store (TESTPLAN 12, 23, 24)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from gateway.messages import ImageRef, Message, Usage
from gateway.session_images import session_image_key
from gateway.session_memory import MemorySessionStore
from gateway.session_redis import RedisSessionStore
from gateway.sessions import BUSY_MESSAGE, CommittedTurn, Sessions, SessionSettings, SessionStore
from tandem.errors import Conflict, InvalidInput, NotFound, Unavailable
from tandem.redis_local import LocalRedis, free_port

IMAGE_ID = "ab" * 32


def answer(text: str, request_id: str = "") -> CommittedTurn:
    return CommittedTurn(request_id, text, (1, 2, 3), "stop", Usage(5, 0, 3, 0), ())


def user(text: str, *images: str) -> Message:
    return Message("user", (*(ImageRef(i, 4) for i in images), text))


def sessions_on(store: SessionStore, **settings: float) -> Sessions:
    return Sessions(store, SessionSettings(**settings))  # type: ignore[arg-type]


async def test_create_get_and_system_prompt(store: SessionStore) -> None:
    sessions = sessions_on(store, default_ttl_seconds=60, max_ttl_seconds=120)
    created = await sessions.create("be brief", 0)
    assert created.ttl_seconds == 60
    assert (await sessions.create("", 10_000)).ttl_seconds == 120
    loaded = await sessions.get(created.session_id)
    assert loaded == created
    assert loaded.messages == (Message("system", ("be brief",)),)


async def test_committed_turns_build_the_history(store: SessionStore) -> None:
    sessions = sessions_on(store)
    sid = (await sessions.create()).session_id
    async with sessions.turn(sid) as turn:
        await turn.commit(user("what is this?", IMAGE_ID), answer("a cat", "r1"))
    async with sessions.turn(sid) as turn:
        assert len(turn.state.messages) == 2
        await turn.commit(user("and now?"), answer("still a cat"))
    state = await sessions.get(sid)
    assert [m.role for m in state.messages] == ["user", "assistant", "user", "assistant"]
    assert state.messages[0].parts == (ImageRef(IMAGE_ID, 4), "what is this?")
    assert state.messages[3].parts == ("still a cat",)
    assert state.image_ids() == [IMAGE_ID]
    assert state.find_turn("r1") == answer("a cat", "r1")
    assert state.find_turn("") is None and len(state.turns) == 1  # turns without an id are not kept


async def test_failed_or_cancelled_turn_leaves_the_session_unchanged(store: SessionStore) -> None:
    sessions = sessions_on(store)
    sid = (await sessions.create("sys")).session_id
    before = await sessions.get(sid)
    with pytest.raises(RuntimeError):
        async with sessions.turn(sid):
            raise RuntimeError("the language service failed")

    async def cancelled_turn() -> None:
        async with sessions.turn(sid):
            await asyncio.sleep(10)

    task = asyncio.create_task(cancelled_turn())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await sessions.get(sid) == before
    async with sessions.turn(sid) as turn:  # the lock was released both times
        await turn.commit(user("hi"), answer("hello"))
    assert len((await sessions.get(sid)).messages) == 3


async def test_concurrent_turns_are_refused_not_interleaved(store: SessionStore) -> None:
    sessions = sessions_on(store)
    sid = (await sessions.create()).session_id
    async with sessions.turn(sid) as first:
        with pytest.raises(Conflict, match=BUSY_MESSAGE):
            async with sessions.turn(sid):
                pass
        await first.commit(user("one"), answer("1"))
    async with sessions.turn(sid) as second:
        await second.commit(user("two"), answer("2"))
    texts = [m.parts[-1] for m in (await sessions.get(sid)).messages]
    assert texts == ["one", "1", "two", "2"]


async def test_commit_is_compare_and_set(store: SessionStore) -> None:
    sessions = sessions_on(store)
    sid = (await sessions.create()).session_id
    async with sessions.turn(sid) as turn:
        state, version = await store.load(sid) or (None, "")
        assert state is not None
        other = state.after_turn(user("sneaky"), answer("x"), 1, 8)
        assert await store.commit(other, version) == "ok"
        with pytest.raises(Conflict, match="not saved"):
            await turn.commit(user("mine"), answer("y"))
    assert [m.parts[-1] for m in (await sessions.get(sid)).messages] == ["sneaky", "x"]


async def test_commit_after_delete_reports_not_found(store: SessionStore) -> None:
    sessions = sessions_on(store)
    sid = (await sessions.create()).session_id
    async with sessions.turn(sid) as turn:
        await sessions.delete(sid)
        with pytest.raises(NotFound, match="during this turn"):
            await turn.commit(user("late"), answer("z"))
    with pytest.raises(NotFound):
        await sessions.get(sid)


async def test_turn_lock_is_kept_alive_while_the_turn_runs(store: SessionStore) -> None:
    sessions = sessions_on(store, lock_seconds=0.3)
    sid = (await sessions.create()).session_id
    async with sessions.turn(sid):
        await asyncio.sleep(0.7)
        with pytest.raises(Conflict):
            async with sessions.turn(sid):
                pass


async def test_keep_turns_bounds_the_idempotency_record(store: SessionStore) -> None:
    sessions = sessions_on(store, keep_turns=2)
    sid = (await sessions.create()).session_id
    for i in range(3):
        async with sessions.turn(sid) as turn:
            await turn.commit(user(f"q{i}"), answer(f"a{i}", f"r{i}"))
    state = await sessions.get(sid)
    assert [t.request_id for t in state.turns] == ["r1", "r2"]
    assert len(state.messages) == 6


async def test_list_pages_and_delete(store: SessionStore) -> None:
    sessions = sessions_on(store)
    created = [await sessions.create() for _ in range(5)]
    ids = [s.session_id for s in sorted(created, key=lambda s: s.cursor())]  # oldest first, then by id
    await sessions.delete(ids[2])
    seen: list[str] = []
    token = ""
    for _ in range(5):
        page, token = await sessions.list_page(2, token)
        seen += [s.session_id for s in page]
        if not token:
            break
    assert seen == [ids[0], ids[1], ids[3], ids[4]]
    with pytest.raises(NotFound):
        await sessions.delete(ids[2])
    with pytest.raises(InvalidInput, match="page_token"):
        await sessions.list_page(2, "not-a-token")


@pytest.mark.parametrize("bad", ["", "nope", "../x", "A" * 32, "0" * 32])
async def test_unknown_or_malformed_ids_are_not_found(store: SessionStore, bad: str) -> None:
    sessions = sessions_on(store)
    with pytest.raises(NotFound, match="unknown session"):
        await sessions.get(bad)
    with pytest.raises(NotFound):
        async with sessions.turn(bad):
            pass


async def test_ttl_expiry_and_refresh_on_commit(redis_server: LocalRedis) -> None:
    store = RedisSessionStore.connect(redis_server.url, f"t{uuid.uuid4().hex[:8]}")
    try:
        sessions = sessions_on(store, default_ttl_seconds=2)
        short = (await sessions.create("", 1)).session_id
        kept = (await sessions.create("", 1)).session_id
        await store.client.set(session_image_key(store.prefix, IMAGE_ID), b"png", ex=1)
        await asyncio.sleep(0.6)
        async with sessions.turn(kept) as turn:
            await turn.commit(user("hi", IMAGE_ID), answer("hello"))
        assert await store.client.ttl(store.key(kept)) == 1
        await asyncio.sleep(0.6)
        with pytest.raises(NotFound):
            await sessions.get(short)
        assert len((await sessions.get(kept)).messages) == 2
        assert await store.client.exists(session_image_key(store.prefix, IMAGE_ID))  # extended with it
        page, _ = await sessions.list_page(10)
        assert [s.session_id for s in page] == [kept]
    finally:
        await store.close()


async def test_memory_store_ttl_follows_its_clock() -> None:
    now = [1000.0]
    sessions = sessions_on(MemorySessionStore(clock=lambda: now[0]), default_ttl_seconds=10)
    sid = (await sessions.create()).session_id
    now[0] += 9
    async with sessions.turn(sid) as turn:
        await turn.commit(user("hi"), answer("hello"))
    now[0] += 9
    assert len((await sessions.get(sid)).messages) == 2
    now[0] += 11
    with pytest.raises(NotFound):
        await sessions.get(sid)


async def test_unreachable_store_is_unavailable_never_silent() -> None:
    store = RedisSessionStore.connect(f"redis://127.0.0.1:{free_port()}/0", "t", timeout_seconds=0.2)
    sessions = sessions_on(store)
    try:
        with pytest.raises(Unavailable, match="session store is unavailable"):
            await sessions.create()
        with pytest.raises(Unavailable):
            await sessions.get("0" * 32)
        with pytest.raises(Unavailable):
            await sessions.list_page()
    finally:
        await store.close()
