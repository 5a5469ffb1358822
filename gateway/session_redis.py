"""``SessionStore`` on Redis.

Keys (``prefix`` is the deployment's cache prefix; a tenant's own keys sit under ``scope`` =
``{prefix}:tenant:{name}``, the anonymous tenant's under ``{prefix}`` itself):

- ``{prefix}:session:{id}`` -> the ``SessionRecord`` bytes (its tenant inside), with the session
  TTL (``EX``), refreshed by every commit;
- ``{prefix}:session:{id}:meta`` -> the same record without history and turns (id, times, TTL,
  tenant), written with it: listing reads these, never whole histories;
- ``{prefix}:session:{id}:lock`` -> owner token of the running turn (``PX``, heartbeat);
- ``{prefix}:session:{id}:fence:{owner}`` -> set when the turn ``owner`` was settled after a
  commit of unknown outcome: a late copy of that commit is refused;
- ``{scope}:sessions`` -> the tenant's sessions, a sorted set of ``{created_ms:016d}:{id}`` (all
  scores 0, paged with ``ZRANGEBYLEX``); ``{scope}:sessions:expiry`` -> the same members scored
  by expiry time, so listing and counting drop sessions Redis has already expired;
- ``{scope}:own:{image_id}`` -> the tenant sent that image (as long as its bytes live);
- ``{scope}:usage`` and ``{scope}:usage:expiry`` -> the tenant's stored bytes (see
  ``gateway.session_scripts``).

Each change is one Lua script (``gateway.session_scripts``). A commit compares the SHA-1 of
the stored record with the version the turn loaded, writes the new record, refreshes the index
and the usage, and extends the TTL of the session's image bytes (``{prefix}:session-image:{id}``,
kept in this same state Redis by ``gateway.session_images``) and of the tenant's claims on them
to at least the session TTL, all atomically. Every Redis failure becomes ``Unavailable``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import session_scripts
from gateway.convert import decode_session, encode_session
from gateway.session_images import session_image_key
from gateway.sessions import CommitResult, CreateResult, SessionState, StoreTimeout
from tandem.embeddings.kv import connect_redis
from tandem.errors import Unavailable

log = logging.getLogger(__name__)

_COMMIT_RESULTS: dict[int, CommitResult] = {1: "ok", 0: "conflict", -1: "gone"}
FENCE_SECONDS = 3600  # a settled turn's late commit is refused for this long
UNAVAILABLE_MESSAGE = "the session store is unavailable; retry later"


@contextlib.contextmanager
def _guard(what: str) -> Iterator[None]:
    """Redis failures as ``Unavailable``; a timeout as ``StoreTimeout`` (the command may have
    reached Redis, and may still run)."""
    try:
        yield
    except (RedisTimeoutError, TimeoutError) as exc:
        log.warning("session store %s failed: %s", what, type(exc).__name__)
        raise StoreTimeout(UNAVAILABLE_MESSAGE) from None
    except (RedisError, OSError) as exc:
        log.warning("session store %s failed: %s", what, type(exc).__name__)
        raise Unavailable(UNAVAILABLE_MESSAGE) from None


def version_of(value: bytes) -> str:
    return hashlib.sha1(value).hexdigest()


class RedisSessionStore:
    """Sessions in Redis; see the module docstring for the keys and ``session_scripts``."""

    def __init__(
        self, client: aioredis.Redis, prefix: str = "tandem", clock: Callable[[], float] = time.time
    ):
        self.client = client
        self.prefix = prefix
        self._clock = clock
        self._scripts = {
            name: client.register_script(getattr(session_scripts, name))
            for name in (
                "CREATE",
                "COMMIT",
                "SETTLE",
                "DELETE",
                "PURGE",
                "USAGE",
                "CLAIM",
                "EXTEND_LOCK",
                "UNLOCK",
            )
        }

    @classmethod
    def connect(cls, url: str, prefix: str, timeout_seconds: float = 2.0) -> RedisSessionStore:
        return cls(connect_redis(url, timeout_seconds), prefix)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    def meta_key(self, session_id: str) -> str:
        return f"{self.key(session_id)}:meta"

    def scope(self, tenant: str) -> str:
        """Where ``tenant``'s own keys live."""
        return f"{self.prefix}:tenant:{tenant}" if tenant else self.prefix

    def _books(self, tenant: str) -> list[str]:
        """The tenant's index, index expiry, usage and usage expiry keys."""
        scope = self.scope(tenant)
        return [f"{scope}:sessions", f"{scope}:sessions:expiry", f"{scope}:usage", f"{scope}:usage:expiry"]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _expires_ms(self, state: SessionState) -> int:
        return state.updated_at_ms + state.ttl_seconds * 1000

    async def _run(
        self, what: str, name: str, keys: Sequence[str], args: Sequence[str | bytes | int]
    ) -> object:
        with _guard(what):
            return await self._scripts[name](keys=list(keys), args=list(args))

    async def create(self, state: SessionState, max_sessions: int = 0, max_bytes: int = 0) -> CreateResult:
        keys = [self.key(state.session_id), *self._books(state.tenant), self.meta_key(state.session_id)]
        args: list[str | bytes | int] = [
            encode_session(state),
            state.ttl_seconds,
            state.cursor(),
            self._expires_ms(state),
            self._now_ms(),
            max_sessions,
            max_bytes,
            f"s:{state.session_id}",
            _meta(state),
        ]
        result = int(cast(int, await self._run("create", "CREATE", keys, args)))
        return "ok" if result == 1 else "sessions" if result == -1 else "bytes"

    async def load(self, session_id: str) -> tuple[SessionState, str] | None:
        with _guard("load"):
            value = cast(bytes | None, await self.client.get(self.key(session_id)))
        if value is None:
            return None
        return decode_session(value), version_of(value)

    async def delete(self, session_id: str) -> SessionState | None:
        loaded = await self.load(session_id)
        if loaded is None:
            return None
        state = loaded[0]
        images = list(dict.fromkeys(state.image_ids()))
        scope = self.scope(state.tenant)
        keys = [
            self.key(session_id),
            *self._books(state.tenant),
            self.meta_key(session_id),
            *(f"{scope}:own:{i}" for i in images),
        ]
        args = [state.cursor(), f"s:{session_id}", *(f"i:{i}" for i in images)]
        deleted = int(cast(int, await self._run("delete", "DELETE", keys, args)))
        return state if deleted else None

    async def page(self, size: int, after: str, tenant: str = "") -> list[SessionState]:
        index, expiry = self._books(tenant)[:2]
        await self._run("list", "PURGE", [index, expiry], [self._now_ms()])
        with _guard("list"):
            found: list[SessionState] = []
            start = f"({after}" if after else "-"
            while len(found) < size:
                raw = await self.client.zrangebylex(index, start, "+", 0, size - len(found))
                if not raw:
                    break
                cursors = [cast(bytes, c).decode() for c in raw]
                values = await self._metas([c[17:] for c in cursors])
                found.extend(s for v in values if v is not None and (s := decode_session(v)).tenant == tenant)
                start = "(" + cursors[-1]
        return found

    async def _metas(self, session_ids: list[str]) -> list[bytes | None]:
        """The listing records of ``session_ids``: their meta keys (a record written before
        those existed is read whole, once; None for a session gone meanwhile)."""
        values = cast(list[bytes | None], await self.client.mget([self.meta_key(i) for i in session_ids]))
        missing = [i for i, v in zip(session_ids, values, strict=True) if v is None]
        if missing:
            records = cast(list[bytes | None], await self.client.mget([self.key(i) for i in missing]))
            whole = dict(zip(missing, records, strict=True))
            values = [v if v is not None else whole[i] for i, v in zip(session_ids, values, strict=True)]
        return values

    async def try_lock(self, session_id: str, owner: str, seconds: float) -> bool:
        with _guard("lock"):
            ms = max(1, int(seconds * 1000))
            return bool(await self.client.set(f"{self.key(session_id)}:lock", owner, px=ms, nx=True))

    async def extend_lock(self, session_id: str, owner: str, seconds: float) -> bool:
        args: list[str | bytes | int] = [owner, max(1, int(seconds * 1000))]
        return bool(await self._run("lock", "EXTEND_LOCK", [f"{self.key(session_id)}:lock"], args))

    async def unlock(self, session_id: str, owner: str) -> None:
        await self._run("unlock", "UNLOCK", [f"{self.key(session_id)}:lock"], [owner])

    def _fence(self, session_id: str, owner: str) -> str:
        return f"{self.key(session_id)}:fence:{owner}"

    async def commit(self, state: SessionState, version: str, fence: str = "") -> CommitResult:
        images = list(dict.fromkeys(state.image_ids()))
        scope = self.scope(state.tenant)
        keys = [
            self.key(state.session_id),
            *self._books(state.tenant),
            self._fence(state.session_id, fence),
            self.meta_key(state.session_id),
            *(session_image_key(self.prefix, i) for i in images),
            *(f"{scope}:own:{i}" for i in images),
        ]
        args: list[str | bytes | int] = [
            version,
            encode_session(state),
            state.ttl_seconds,
            self._expires_ms(state),
            state.cursor(),
            f"s:{state.session_id}",
            _meta(state),
        ]
        result = int(cast(int, await self._run("commit", "COMMIT", keys, args)))
        return _COMMIT_RESULTS.get(result, "fenced")

    async def settle(self, session_id: str, fence: str) -> SessionState | None:
        keys = [self.key(session_id), self._fence(session_id, fence)]
        value = cast(bytes | None, await self._run("settle", "SETTLE", keys, [FENCE_SECONDS * 1000]))
        return None if value is None else decode_session(value)

    async def usage(self, tenant: str) -> int:
        return int(cast(int, await self._run("usage", "USAGE", self._books(tenant)[2:], [self._now_ms()])))

    async def claim_images(self, tenant: str, images: Sequence[tuple[str, int]], ttl_seconds: int) -> None:
        if not images:
            return
        scope = self.scope(tenant)
        keys = [*self._books(tenant)[2:]]
        args: list[str | bytes | int] = [ttl_seconds * 1000, self._now_ms()]
        for image_id, size in images:
            keys += [f"{scope}:own:{image_id}", f"{self.prefix}:img:{image_id}"]
            args += [size, f"i:{image_id}"]
        await self._run("image claim", "CLAIM", keys, args)

    async def has_images(self, tenant: str, image_ids: Sequence[str]) -> bool:
        wanted = list(dict.fromkeys(image_ids))
        if not wanted:
            return True
        scope = self.scope(tenant)
        with _guard("image lookup"):
            found = int(await self.client.exists(*(f"{scope}:own:{i}" for i in wanted)))
        return found == len(wanted)

    async def close(self) -> None:
        await self.client.aclose()


def _meta(state: SessionState) -> bytes:
    """What listing needs of a session: its record without history and turns."""
    return encode_session(replace(state, messages=(), turns=()))
