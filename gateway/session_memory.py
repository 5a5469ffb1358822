"""``SessionStore`` in process memory, for logic tests and a single-process dev gateway.

Same semantics as ``RedisSessionStore``: records are kept encoded (so the codec is exercised),
versions are SHA-1 digests of the stored bytes, TTLs and lock expiry follow ``clock``, a tenant
sees its own sessions, and its usage counts its live records and the images it claimed (a
claim lives ``ttl_seconds``: there are no image bytes here to follow).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.convert import decode_session, encode_session
from gateway.session_redis import version_of
from gateway.sessions import CommitResult, CreateResult, SessionState


class MemorySessionStore:
    """Dicts of encoded records, locks, fences, image claims and usage; one event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._records: dict[str, tuple[bytes, float]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._fences: set[tuple[str, str]] = set()
        self._claims: dict[tuple[str, str], tuple[int, float]] = {}  # (tenant, image) -> size, expiry

    def _live(self, session_id: str) -> bytes | None:
        item = self._records.get(session_id)
        if item is None or item[1] <= self._clock():
            self._records.pop(session_id, None)
            return None
        return item[0]

    def _put(self, state: SessionState) -> None:
        self._records[state.session_id] = (encode_session(state), self._clock() + state.ttl_seconds)

    def _states(self, tenant: str) -> list[SessionState]:
        live = [decode_session(v) for i in list(self._records) if (v := self._live(i)) is not None]
        return [s for s in live if s.tenant == tenant]

    async def create(self, state: SessionState, max_sessions: int = 0, max_bytes: int = 0) -> CreateResult:
        if max_sessions and len(self._states(state.tenant)) >= max_sessions:
            return "sessions"
        if max_bytes and await self.usage(state.tenant) + len(encode_session(state)) > max_bytes:
            return "bytes"
        self._put(state)
        return "ok"

    async def load(self, session_id: str) -> tuple[SessionState, str] | None:
        value = self._live(session_id)
        return None if value is None else (decode_session(value), version_of(value))

    async def delete(self, session_id: str) -> SessionState | None:
        value = self._live(session_id)
        if value is None:
            return None
        del self._records[session_id]
        state = decode_session(value)
        for image_id in state.image_ids():
            self._claims.pop((state.tenant, image_id), None)
        return state

    async def page(self, size: int, after: str, tenant: str = "") -> list[SessionState]:
        ordered = sorted((s for s in self._states(tenant) if s.cursor() > after), key=SessionState.cursor)
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

    async def commit(self, state: SessionState, version: str, fence: str = "") -> CommitResult:
        if (state.session_id, fence) in self._fences:
            return "fenced"
        current = self._live(state.session_id)
        if current is None:
            return "gone"
        if version_of(current) != version:
            return "conflict"
        self._put(state)
        return "ok"

    async def settle(self, session_id: str, fence: str) -> SessionState | None:
        self._fences.add((session_id, fence))
        loaded = await self.load(session_id)
        return None if loaded is None else loaded[0]

    async def usage(self, tenant: str) -> int:
        now = self._clock()
        claimed = sum(size for (t, _), (size, expiry) in self._claims.items() if t == tenant and expiry > now)
        records = [v for i in list(self._records) if (v := self._live(i)) is not None]
        return claimed + sum(len(v) for v in records if decode_session(v).tenant == tenant)

    async def claim_images(self, tenant: str, images: Sequence[tuple[str, int]], ttl_seconds: int) -> None:
        for image_id, size in images:
            self._claims[(tenant, image_id)] = (size, self._clock() + ttl_seconds)

    async def has_images(self, tenant: str, image_ids: Sequence[str]) -> bool:
        now = self._clock()
        return all(self._claims.get((tenant, i), (0, now))[1] > now for i in image_ids)

    async def close(self) -> None:
        self._records.clear()
        self._locks.clear()
