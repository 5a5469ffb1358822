"""Durable chat sessions: state, the storage interface, and the turn protocol.

A session's state (``SessionState``: metadata, committed history with image references, and the
last committed turns by client request id) is stored as one ``SessionRecord`` value, so any
gateway replica serves any session and a restart loses no committed turn.

Turn protocol (``Sessions.turn``):

1. take the session's turn lock (a Redis key with a TTL, kept alive by a heartbeat while the
   turn runs); if another turn holds it the call is refused with ``Conflict`` (ABORTED):
   concurrent turns of one session are refused, not queued, so a client never waits blindly
   and a history is never interleaved;
2. load the state and its version (a digest of the stored bytes);
3. generate the answer;
4. ``Turn.commit`` writes the new state only if the stored version is still the one loaded
   (compare-and-set), refreshing the TTL; a turn that fails or is cancelled never commits, so
   the session stays exactly as it was;
5. release the lock (at shutdown ``release_all`` frees the locks of cut turns; the lock of a
   crashed gateway expires after ``lock_seconds``, so a retry waits at most that long).

A turn carrying a client ``request_id`` that was already committed is answered from the stored
``CommittedTurn`` (replayed) instead of generating again. The store raises ``Unavailable``
when it cannot be reached: a session is never silently lost or silently not saved.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from gateway.messages import Chunk, FinishReason, ImageRef, Message, Usage
from tandem.errors import Conflict, InvalidInput, NotFound, Unavailable

log = logging.getLogger(__name__)

CommitResult = Literal["ok", "conflict", "gone"]
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_CURSOR = re.compile(r"\d{16}:[0-9a-f]{32}")
BUSY_MESSAGE = "another turn of this session is in progress; retry when it finishes"


@dataclass(frozen=True)
class CommittedTurn:
    """The stored answer of a committed turn, replayed for a retry with the same request id."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    image_ids: tuple[str, ...]

    def replay(self) -> Chunk:
        return Chunk(self.text, self.token_ids, self.finish_reason, self.usage, self.image_ids, replayed=True)


@dataclass(frozen=True)
class SessionState:
    """One session; ``messages`` hold text and stored ``ImageRef`` parts only."""

    session_id: str
    created_at_ms: int
    updated_at_ms: int
    ttl_seconds: int
    messages: tuple[Message, ...] = ()
    turns: tuple[CommittedTurn, ...] = ()

    def find_turn(self, request_id: str) -> CommittedTurn | None:
        if not request_id:
            return None
        return next((t for t in reversed(self.turns) if t.request_id == request_id), None)

    def image_ids(self) -> list[str]:
        return [p.image_id for m in self.messages for p in m.parts if isinstance(p, ImageRef)]

    def cursor(self) -> str:
        """Listing order key: creation time, then id."""
        return f"{self.created_at_ms:016d}:{self.session_id}"

    def after_turn(self, user: Message, turn: CommittedTurn, now_ms: int, keep_turns: int) -> SessionState:
        answer = Message("assistant", (turn.text,))
        turns = (*self.turns, turn)[-keep_turns:] if turn.request_id else self.turns
        return replace(self, updated_at_ms=now_ms, messages=(*self.messages, user, answer), turns=turns)

    def __repr__(self) -> str:
        return f"SessionState({self.session_id}, messages={len(self.messages)}, turns={len(self.turns)})"


class SessionStore(Protocol):
    """Storage of session states, their listing index and their turn locks."""

    async def create(self, state: SessionState) -> None: ...

    async def load(self, session_id: str) -> tuple[SessionState, str] | None:
        """The state and its version (opaque), or None when absent or expired."""
        ...

    async def delete(self, session_id: str) -> bool: ...

    async def page(self, size: int, after: str) -> list[SessionState]:
        """Up to ``size`` live sessions whose ``cursor()`` sorts after ``after``, in order."""
        ...

    async def try_lock(self, session_id: str, owner: str, seconds: float) -> bool: ...

    async def extend_lock(self, session_id: str, owner: str, seconds: float) -> bool: ...

    async def unlock(self, session_id: str, owner: str) -> None: ...

    async def commit(self, state: SessionState, version: str) -> CommitResult:
        """Write ``state`` (refreshing its TTL) only if the stored version is ``version``."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class SessionSettings:
    """TTL and bookkeeping limits of sessions."""

    default_ttl_seconds: int = 3600
    max_ttl_seconds: int = 7 * 24 * 3600
    lock_seconds: float = 30.0
    keep_turns: int = 64
    default_page_size: int = 50
    max_page_size: int = 500

    def ttl(self, requested: int) -> int:
        return min(requested or self.default_ttl_seconds, self.max_ttl_seconds)


class Turn:
    """One running turn: the state as loaded under the lock, and its commit."""

    def __init__(self, sessions: Sessions, state: SessionState, version: str):
        self.state = state
        self._sessions = sessions
        self._version = version

    async def commit(self, user: Message, answer: CommittedTurn) -> SessionState:
        new = self.state.after_turn(user, answer, self._sessions.now_ms(), self._sessions.settings.keep_turns)
        result = await self._sessions.store.commit(new, self._version)
        if result == "gone":
            raise NotFound("the session was deleted or expired during this turn")
        if result == "conflict":
            raise Conflict(
                "the session changed during this turn and its answer was not saved; retry the turn"
            )
        self.state, self._version = new, ""
        return new


class Sessions:
    """Session operations over a ``SessionStore``; ids and page tokens are validated here."""

    def __init__(
        self, store: SessionStore, settings: SessionSettings, clock: Callable[[], float] = time.time
    ):
        self.store = store
        self.settings = settings
        self._clock = clock
        self._held: set[tuple[str, str]] = set()

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def create(self, system_prompt: str = "", ttl_seconds: int = 0) -> SessionState:
        now = self.now_ms()
        messages = (Message("system", (system_prompt,)),) if system_prompt else ()
        state = SessionState(uuid.uuid4().hex, now, now, self.settings.ttl(ttl_seconds), messages)
        await self.store.create(state)
        return state

    async def get(self, session_id: str) -> SessionState:
        return (await self._load(session_id))[0]

    async def _load(self, session_id: str) -> tuple[SessionState, str]:
        loaded = await self.store.load(session_id) if _SESSION_ID.fullmatch(session_id) else None
        if loaded is None:
            raise NotFound("unknown session id (it may have expired or been deleted); create a new session")
        return loaded

    async def delete(self, session_id: str) -> None:
        if not (_SESSION_ID.fullmatch(session_id) and await self.store.delete(session_id)):
            raise NotFound("unknown session id (it may have expired or been deleted)")

    async def list_page(self, page_size: int = 0, page_token: str = "") -> tuple[list[SessionState], str]:
        """One page of live sessions (oldest first) and the token of the next page ("" at the end)."""
        size = min(page_size or self.settings.default_page_size, self.settings.max_page_size)
        states = await self.store.page(size, _decode_token(page_token))
        more = len(states) == size
        return states, _encode_token(states[-1].cursor()) if more else ""

    @contextlib.asynccontextmanager
    async def turn(self, session_id: str) -> AsyncIterator[Turn]:
        """Hold the session's turn lock for the body; refuse with ``Conflict`` when it is taken."""
        await self.get(session_id)
        owner = uuid.uuid4().hex
        if not await self.store.try_lock(session_id, owner, self.settings.lock_seconds):
            raise Conflict(BUSY_MESSAGE)
        self._held.add((session_id, owner))
        keeper = asyncio.create_task(self._keep_lock(session_id, owner))
        try:
            yield Turn(self, *await self._load(session_id))
        finally:
            keeper.cancel()
            if (session_id, owner) in self._held:
                self._held.discard((session_id, owner))
                await self._unlock(session_id, owner)

    async def release_all(self) -> None:
        """Release the locks of turns still running (at shutdown, before the store closes)."""
        held, self._held = self._held, set()
        for session_id, owner in held:
            await self._unlock(session_id, owner)

    async def _keep_lock(self, session_id: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self.settings.lock_seconds / 3)
            try:
                if not await self.store.extend_lock(session_id, owner, self.settings.lock_seconds):
                    log.warning(
                        "session %s lost its turn lock; the commit will detect any conflict", session_id
                    )
                    return
            except Unavailable:
                continue

    async def _unlock(self, session_id: str, owner: str) -> None:
        try:
            await self.store.unlock(session_id, owner)
        except Unavailable:
            log.warning("could not release the turn lock of session %s; it expires by itself", session_id)


def _encode_token(cursor: str) -> str:
    return base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        cursor = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, ValueError):
        cursor = ""
    if not _CURSOR.fullmatch(cursor):
        raise InvalidInput("page_token is not a token a previous ListSessions response returned")
    return cursor
