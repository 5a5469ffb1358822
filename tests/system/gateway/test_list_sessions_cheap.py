"""ListSessions reads metadata, never whole histories (issue 11, finding 8: it decoded every
record to return ids and times). A spy on the record decoder sees only small values, however
large the histories are; the listing is still complete and in order, and a session's metadata
follows its commits and its deletion."""

from __future__ import annotations

import uuid

import pytest

from gateway import session_redis
from gateway.messages import Message, Usage
from gateway.session_redis import RedisSessionStore
from gateway.sessions import CommittedTurn, Sessions, SessionSettings, SessionState
from tandem.redis_local import LocalRedis

BIG = "x" * 300_000  # one long answer: each history is over 300 KB
SMALL = 1024


async def test_listing_decodes_only_small_metadata(
    redis_server: LocalRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisSessionStore.connect(redis_server.url, f"ls{uuid.uuid4().hex[:8]}")
    sessions = Sessions(store, SessionSettings(default_ttl_seconds=600))
    try:
        ids = [(await sessions.create("system prompt")).session_id for _ in range(3)]
        for session_id in ids:
            async with sessions.turn(session_id) as turn:
                answer = CommittedTurn("", BIG, (1,), "stop", Usage(1, 0, 1, 0), ())
                await turn.commit(Message("user", ("tell me everything",)), answer)
        for session_id in ids:
            assert await store.client.strlen(store.key(session_id)) > len(BIG)

        decoded: list[int] = []
        real = session_redis.decode_session

        def spy(value: bytes) -> SessionState:
            decoded.append(len(value))
            return real(value)

        monkeypatch.setattr(session_redis, "decode_session", spy)
        page, token = await sessions.list_page(10)
        assert {s.session_id for s in page} == set(ids) and len(page) == 3 and token == ""
        assert [s.cursor() for s in page] == sorted(s.cursor() for s in page)
        assert all(s.updated_at_ms >= s.created_at_ms and s.ttl_seconds == 600 for s in page)
        assert len(decoded) == 3 and max(decoded) < SMALL, decoded

        await sessions.delete(ids[1])
        assert not await store.client.exists(store.meta_key(ids[1]))
        page, _ = await sessions.list_page(10)
        assert {s.session_id for s in page} == {ids[0], ids[2]}
    finally:
        await store.close()


async def test_a_record_written_before_metadata_existed_is_still_listed(redis_server: LocalRedis) -> None:
    store = RedisSessionStore.connect(redis_server.url, f"ls{uuid.uuid4().hex[:8]}")
    sessions = Sessions(store, SessionSettings(default_ttl_seconds=600))
    try:
        old = (await sessions.create("")).session_id
        await store.client.delete(store.meta_key(old))  # as an older gateway stored it
        page, _ = await sessions.list_page(10)
        assert [s.session_id for s in page] == [old]
    finally:
        await store.close()
