"""``SessionStore`` in process memory, for logic tests and a single-process dev gateway.

Same semantics as ``RedisSessionStore``: records are kept encoded (so the codec is exercised),
versions are SHA-1 digests of the stored bytes, TTLs and lock expiry follow ``clock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.convert import decode_session, encode_session
from gateway.session_redis import version_of
from gateway.sessions import CommitResult, SessionState


class MemorySessionStore:
    """A dict of encoded records plus a dict of locks; one event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._records: dict[str, tuple[bytes, float]] = {}
        self._locks: dict[str, tuple[str, float]] = {}

    def _live(self, session_id: str) -> bytes | None:
        item = self._records.get(session_id)
        if item is None or item[1] <= self._clock():
            self._records.pop(session_id, None)
            return None
        return item[0]

    def _put(self, state: SessionState) -> None:
        self._records[state.session_id] = (encode_session(state), self._clock() + state.ttl_seconds)

    async def create(self, state: SessionState) -> None:
        self._put(state)

    async def load(self, session_id: str) -> tuple[SessionState, str] | None:
        value = self._live(session_id)
        return None if value is None else (decode_session(value), version_of(value))

    async def delete(self, session_id: str) -> bool:
        return self._live(session_id) is not None and self._records.pop(session_id, None) is not None

    async def page(self, size: int, after: str) -> list[SessionState]:
        live = [decode_session(v) for i in list(self._records) if (v := self._live(i)) is not None]
        ordered = sorted((s for s in live if s.cursor() > after), key=SessionState.cursor)
        return ordered[:size]

    def _lock_owner(self, session_id: str) -> str | None:
        item = self._locks.get(session_id)
        if item is None or item[1] <= self._clock():
            self._locks.pop(session_id, None)
            return None
        return item[0]

    async def try_lock(self, session_id: str, owner: str, seconds: float) -> bool:
        if self._lock_owner(session_id) is not None:
            return False
        self._locks[session_id] = (owner, self._clock() + seconds)
        return True

    async def extend_lock(self, session_id: str, owner: str, seconds: float) -> bool:
        if self._lock_owner(session_id) != owner:
            return False
        self._locks[session_id] = (owner, self._clock() + seconds)
        return True

    async def unlock(self, session_id: str, owner: str) -> None:
        if self._lock_owner(session_id) == owner:
            del self._locks[session_id]

    async def commit(self, state: SessionState, version: str) -> CommitResult:
        current = self._live(state.session_id)
        if current is None:
            return "gone"
        if version_of(current) != version:
            return "conflict"
        self._put(state)
        return "ok"

    async def close(self) -> None:
        self._records.clear()
        self._locks.clear()
