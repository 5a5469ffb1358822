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

Exactly once: a commit whose outcome is unknown (the store timed out, ``StoreTimeout``: the
write may have reached it, e.g. a paused Redis that runs it when it resumes) is settled before
the client hears anything: ``SessionStore.settle`` fences the turn (a write of it arriving
later is refused) and reads the session back, retried while the store stays slow, for up to
``lock_seconds``. The turn is reported committed if the history holds it, else ``Unavailable``
with nothing written. A store that is down (connection refused) has written nothing: the turn
is ``Unavailable`` at once; one that goes down while settling leaves the outcome unknown, and
the message says to read the session before retrying.

Tenants: a session belongs to the tenant that created it. Every call names the caller's tenant;
another tenant's session is ``NotFound`` with the same message as an unknown id, and listing
shows the caller's own sessions only (a per-tenant index). Per tenant the store counts live
sessions and stored bytes (session records and the image bytes the tenant sent, see
``SessionStore.usage``); ``SessionSettings`` holds the limits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from gateway.messages import Chunk, FinishReason, ImageRef, Message, Part, Sampling, Usage
from tandem.errors import Conflict, InvalidInput, NotFound, Overloaded, PreconditionFailed, Unavailable

log = logging.getLogger(__name__)

CommitResult = Literal["ok", "conflict", "gone", "fenced"]
CreateResult = Literal["ok", "sessions", "bytes"]
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_CURSOR = re.compile(r"\d{16}:[0-9a-f]{32}")
_SETTLE_RETRY_SECONDS = 0.2
BUSY_MESSAGE = "another turn of this session is in progress; retry when it finishes"
UNKNOWN_SESSION = "unknown session id (it may have expired or been deleted)"
OUTCOME_UNKNOWN = (
    "the session store stopped answering while saving this turn; read the session to see whether "
    "it was saved before you retry (or retry with the same request id)"
)
REUSED_REQUEST_ID = (
    "this request id was already used for a turn with another input; send a new request id "
    "(a retry must repeat the same turn)"
)


@dataclass(frozen=True)
class CommittedTurn:
    """The stored answer of a committed turn, replayed for a retry with the same request id."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    image_ids: tuple[str, ...]
    input_digest: str = ""

    def replay(self, input_digest: str = "") -> Chunk:
        """The stored answer; ``PreconditionFailed`` when the retry's input is not the turn's."""
        if input_digest and self.input_digest and input_digest != self.input_digest:
            raise PreconditionFailed(REUSED_REQUEST_ID)
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
    tenant: str = ""

    def find_turn(self, request_id: str) -> CommittedTurn | None:
        if not request_id:
            return None
        return next((t for t in reversed(self.turns) if t.request_id == request_id), None)

    def image_ids(self) -> list[str]:
        return [p.image_id for m in self.messages for p in m.parts if isinstance(p, ImageRef)]

    def holds(self, state: SessionState) -> bool:
        """True when this history starts with all of ``state``'s (a committed turn is kept)."""
        return self.messages[: len(state.messages)] == state.messages

    def cursor(self) -> str:
        """Listing order key: creation time, then id."""
        return f"{self.created_at_ms:016d}:{self.session_id}"

    def after_turn(self, user: Message, turn: CommittedTurn, now_ms: int, keep_turns: int) -> SessionState:
        answer = Message("assistant", (turn.text,))
        turns = (*self.turns, turn)[-keep_turns:] if turn.request_id else self.turns
        return replace(self, updated_at_ms=now_ms, messages=(*self.messages, user, answer), turns=turns)

    def __repr__(self) -> str:
        return f"SessionState({self.session_id}, messages={len(self.messages)}, turns={len(self.turns)})"


class StoreTimeout(Unavailable):
    """The store did not answer in time: a write may have reached it (and may still apply).
    Other ``Unavailable`` errors of a store mean nothing was written."""


class SessionStore(Protocol):
    """Storage of session states, their per-tenant listing index and usage, their turn locks,
    and which tenant sent which image (``tenant`` "" is the anonymous tenant)."""

    async def create(self, state: SessionState, max_sessions: int = 0, max_bytes: int = 0) -> CreateResult:
        """Store a new session unless its tenant holds ``max_sessions`` live sessions, or its
        stored bytes would pass ``max_bytes`` (0: no limit); says which limit refused it."""
        ...

    async def load(self, session_id: str) -> tuple[SessionState, str] | None:
        """The state and its version (opaque), or None when absent or expired."""
        ...

    async def delete(self, session_id: str) -> SessionState | None:
        """Delete the session (and its tenant's claims on its images); the deleted state."""
        ...

    async def page(self, size: int, after: str, tenant: str = "") -> list[SessionState]:
        """Up to ``size`` live sessions of ``tenant`` whose ``cursor()`` sorts after ``after``."""
        ...

    async def try_lock(self, session_id: str, owner: str, seconds: float) -> bool: ...

    async def extend_lock(self, session_id: str, owner: str, seconds: float) -> bool: ...

    async def unlock(self, session_id: str, owner: str) -> None: ...

    async def commit(self, state: SessionState, version: str, fence: str = "") -> CommitResult:
        """Write ``state`` (refreshing its TTL) only if the stored version is ``version`` and
        the turn ``fence`` was not settled ("fenced"); ``StoreTimeout`` when the outcome is
        unknown."""
        ...

    async def settle(self, session_id: str, fence: str) -> SessionState | None:
        """Refuse every later commit under ``fence``, then read the session (None: gone)."""
        ...

    async def usage(self, tenant: str) -> int:
        """Bytes ``tenant`` keeps: live session records and the image bytes it sent (approximate)."""
        ...

    async def claim_images(self, tenant: str, images: Sequence[tuple[str, int]], ttl_seconds: int) -> None:
        """Record that ``tenant`` sent these (image id, byte count) images; a claim lives as long
        as the image's stored bytes (``ttl_seconds`` when they are not stored)."""
        ...

    async def has_images(self, tenant: str, image_ids: Sequence[str]) -> bool:
        """True when ``tenant`` claimed every one of ``image_ids``."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class SessionSettings:
    """TTL, bookkeeping and per-tenant limits of sessions (0: no limit)."""

    default_ttl_seconds: int = 3600
    max_ttl_seconds: int = 7 * 24 * 3600
    lock_seconds: float = 30.0
    keep_turns: int = 64
    default_page_size: int = 50
    max_page_size: int = 500
    max_system_prompt_bytes: int = 64 * 1024
    max_sessions_per_tenant: int = 0
    max_stored_bytes_per_tenant: int = 0

    def ttl(self, requested: int) -> int:
        return min(requested or self.default_ttl_seconds, self.max_ttl_seconds)


class Turn:
    """One running turn: the state as loaded under the lock, and its commit."""

    def __init__(self, sessions: Sessions, state: SessionState, version: str, owner: str = ""):
        self.state = state
        self._sessions = sessions
        self._version = version
        self._owner = owner or uuid.uuid4().hex

    async def commit(self, user: Message, answer: CommittedTurn) -> SessionState:
        """Save the turn; when the store's answer is lost, settle it (module docstring)."""
        new = self.state.after_turn(user, answer, self._sessions.now_ms(), self._sessions.settings.keep_turns)
        try:
            result = await self._sessions.store.commit(new, self._version, self._owner)
        except StoreTimeout:
            log.warning("session %s: the commit's outcome is unknown; settling it", new.session_id)
            result = await self._settle(new)
        if result == "gone":
            raise NotFound("the session was deleted or expired during this turn")
        if result == "conflict":
            raise Conflict(
                "the session changed during this turn and its answer was not saved; retry the turn"
            )
        if result == "fenced":
            raise Unavailable("the session store failed while saving this turn; it was not saved, retry it")
        self.state, self._version = new, ""
        return new

    async def _settle(self, new: SessionState) -> CommitResult:
        """Fence this turn and read the session back, retrying while the store is too slow to
        answer (for up to ``lock_seconds``); a store that is down cannot tell, and says so."""
        stop = time.monotonic() + self._sessions.settings.lock_seconds
        while True:
            try:
                stored = await self._sessions.store.settle(new.session_id, self._owner)
            except Unavailable as exc:
                if not isinstance(exc, StoreTimeout) or time.monotonic() >= stop:
                    raise Unavailable(OUTCOME_UNKNOWN) from None
                await asyncio.sleep(_SETTLE_RETRY_SECONDS)
                continue
            if stored is None:
                return "gone"
            return "ok" if stored.holds(new) else "fenced"


class Sessions:
    """Session operations over a ``SessionStore``; ids, page tokens, tenants and limits are
    checked here. ``tenant`` "" is the anonymous tenant of a deployment without API keys."""

    def __init__(
        self, store: SessionStore, settings: SessionSettings, clock: Callable[[], float] = time.time
    ):
        self.store = store
        self.settings = settings
        self._clock = clock
        self._held: set[tuple[str, str]] = set()

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def create(self, system_prompt: str = "", ttl_seconds: int = 0, tenant: str = "") -> SessionState:
        limit = self.settings.max_system_prompt_bytes
        if limit and len(system_prompt.encode("utf-8", "surrogatepass")) > limit:
            raise InvalidInput(
                f"the system prompt is too large: at most {limit} bytes (--max-system-prompt-bytes)"
            )
        now = self.now_ms()
        messages = (Message("system", (system_prompt,)),) if system_prompt else ()
        state = SessionState(
            uuid.uuid4().hex, now, now, self.settings.ttl(ttl_seconds), messages, tenant=tenant
        )
        settings = self.settings
        result = await self.store.create(
            state, settings.max_sessions_per_tenant, settings.max_stored_bytes_per_tenant
        )
        if result == "sessions":
            raise Overloaded(
                f"this tenant has {settings.max_sessions_per_tenant} live sessions, the limit "
                "(--max-sessions-per-tenant); delete some first"
            )
        if result == "bytes":
            raise Overloaded(self._bytes_message())
        return state

    async def check_storage(self, tenant: str) -> None:
        """``Overloaded`` when ``tenant`` already keeps its limit of stored bytes."""
        limit = self.settings.max_stored_bytes_per_tenant
        if limit and await self.store.usage(tenant) >= limit:
            raise Overloaded(self._bytes_message())

    def _bytes_message(self) -> str:
        return (
            f"this tenant stores {self.settings.max_stored_bytes_per_tenant} bytes, the limit "
            "(--max-stored-bytes-per-tenant); delete sessions or wait for images to expire"
        )

    async def get(self, session_id: str, tenant: str = "") -> SessionState:
        return (await self._load(session_id, tenant))[0]

    async def _load(self, session_id: str, tenant: str) -> tuple[SessionState, str]:
        loaded = await self.store.load(session_id) if _SESSION_ID.fullmatch(session_id) else None
        if loaded is None or loaded[0].tenant != tenant:  # another tenant's: exactly like unknown
            raise NotFound(f"{UNKNOWN_SESSION}; create a new session")
        return loaded

    async def delete(self, session_id: str, tenant: str = "") -> SessionState:
        """Delete ``tenant``'s session; the deleted state."""
        await self._load(session_id, tenant)
        deleted = await self.store.delete(session_id)
        if deleted is None:
            raise NotFound(f"{UNKNOWN_SESSION}; create a new session")
        return deleted

    async def list_page(
        self, page_size: int = 0, page_token: str = "", tenant: str = ""
    ) -> tuple[list[SessionState], str]:
        """One page of ``tenant``'s live sessions (oldest first) and the next page's token ("" at
        the end)."""
        size = min(page_size or self.settings.default_page_size, self.settings.max_page_size)
        states = await self.store.page(size, _decode_token(page_token), tenant)
        more = len(states) == size
        return states, _encode_token(states[-1].cursor()) if more else ""

    @contextlib.asynccontextmanager
    async def turn(self, session_id: str, tenant: str = "") -> AsyncIterator[Turn]:
        """Hold the session's turn lock for the body; refuse with ``Conflict`` when it is taken."""
        await self.get(session_id, tenant)
        owner = uuid.uuid4().hex
        if not await self.store.try_lock(session_id, owner, self.settings.lock_seconds):
            raise Conflict(BUSY_MESSAGE)
        self._held.add((session_id, owner))
        keeper = asyncio.create_task(self._keep_lock(session_id, owner))
        try:
            yield Turn(self, *await self._load(session_id, tenant), owner)
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


def input_digest(parts: Sequence[Part], sampling: Sampling) -> str:
    """sha256 of a turn's input as the client sent it (image bytes by their hash)."""
    body = json.dumps([[_part_key(p) for p in parts], dataclasses.asdict(sampling)], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _part_key(part: Part) -> list[str]:
    if isinstance(part, str):
        return ["text", part]
    if isinstance(part, ImageRef):
        return ["ref", part.image_id]
    if part.data:
        return ["data", hashlib.sha256(part.data).hexdigest(), part.media_type]
    return ["url", part.url] if part.url else ["id", part.image_id]


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
