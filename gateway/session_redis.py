"""``SessionStore`` on Redis.

Keys (``prefix`` is the deployment's cache prefix):

- ``{prefix}:session:{id}`` -> the ``SessionRecord`` bytes, with the session TTL (``EX``),
  refreshed by every commit;
- ``{prefix}:session:{id}:lock`` -> owner token of the running turn (``PX``, heartbeat);
- ``{prefix}:sessions`` -> sorted set of ``{created_ms:016d}:{id}`` (all scores 0, paged with
  ``ZRANGEBYLEX``);
- ``{prefix}:sessions:expiry`` -> the same members scored by expiry time, so listing can drop
  sessions Redis has already expired.

A commit is one Lua script: it compares the SHA-1 of the stored record with the version the
turn loaded, writes the new record, refreshes the index and extends the TTL of the session's
image bytes (``{prefix}:img:{image_id}``, kept by the vision service) to at least the session
TTL, all atomically. Every Redis failure becomes ``Unavailable``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.convert import decode_session, encode_session
from gateway.sessions import CommitResult, SessionState
from tandem.embeddings.kv import connect_redis
from tandem.errors import Unavailable

log = logging.getLogger(__name__)

_COMMIT = """
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if redis.sha1hex(current) ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
redis.call('ZADD', KEYS[2], 0, ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
for i = 4, #KEYS do
  local left = redis.call('TTL', KEYS[i])
  if left >= 0 and left < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
return 1
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_PURGE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1000)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return #gone
"""

UNAVAILABLE_MESSAGE = "the session store is unavailable; retry later"


@contextlib.contextmanager
def _guard(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("session store %s failed: %s", what, type(exc).__name__)
        raise Unavailable(UNAVAILABLE_MESSAGE) from None


def version_of(value: bytes) -> str:
    return hashlib.sha1(value).hexdigest()


class RedisSessionStore:
    """Sessions in Redis; see the module docstring for the keys and the commit script."""

    def __init__(
        self, client: aioredis.Redis, prefix: str = "tandem", clock: Callable[[], float] = time.time
    ):
        self.client = client
        self.prefix = prefix
        self._clock = clock
        self._index = f"{prefix}:sessions"
        self._expiry = f"{prefix}:sessions:expiry"
        self._commit = client.register_script(_COMMIT)
        self._extend = client.register_script(_EXTEND)
        self._unlock = client.register_script(_UNLOCK)
        self._purge = client.register_script(_PURGE)

    @classmethod
    def connect(cls, url: str, prefix: str, timeout_seconds: float = 2.0) -> RedisSessionStore:
        return cls(connect_redis(url, timeout_seconds), prefix)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    def _expires_ms(self, state: SessionState) -> int:
        return state.updated_at_ms + state.ttl_seconds * 1000

    async def create(self, state: SessionState) -> None:
        with _guard("create"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self.key(state.session_id), encode_session(state), ex=state.ttl_seconds, nx=True)
                pipe.zadd(self._index, {state.cursor(): 0})
                pipe.zadd(self._expiry, {state.cursor(): self._expires_ms(state)})
                await pipe.execute()

    async def load(self, session_id: str) -> tuple[SessionState, str] | None:
        with _guard("load"):
            value = cast(bytes | None, await self.client.get(self.key(session_id)))
        if value is None:
            return None
        return decode_session(value), version_of(value)

    async def delete(self, session_id: str) -> bool:
        loaded = await self.load(session_id)
        if loaded is None:
            return False
        cursor = loaded[0].cursor()
        with _guard("delete"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(self.key(session_id))
                pipe.zrem(self._index, cursor)
                pipe.zrem(self._expiry, cursor)
                deleted, _, _ = await pipe.execute()
        return bool(deleted)

    async def page(self, size: int, after: str) -> list[SessionState]:
        with _guard("list"):
            await self._purge(keys=[self._index, self._expiry], args=[int(self._clock() * 1000)])
            found: list[SessionState] = []
            start = f"({after}" if after else "-"
            while len(found) < size:
                raw = await self.client.zrangebylex(self._index, start, "+", 0, size - len(found))
                if not raw:
                    break
                cursors = [cast(bytes, c).decode() for c in raw]
                values = cast(list[bytes | None], await self.client.mget([self.key(c[17:]) for c in cursors]))
                found.extend(decode_session(v) for v in values if v is not None)
                start = "(" + cursors[-1]
        return found

    async def try_lock(self, session_id: str, owner: str, seconds: float) -> bool:
        with _guard("lock"):
            ms = max(1, int(seconds * 1000))
            return bool(await self.client.set(f"{self.key(session_id)}:lock", owner, px=ms, nx=True))

    async def extend_lock(self, session_id: str, owner: str, seconds: float) -> bool:
        with _guard("lock"):
            args: list[str | int] = [owner, max(1, int(seconds * 1000))]
            return bool(await self._extend(keys=[f"{self.key(session_id)}:lock"], args=args))

    async def unlock(self, session_id: str, owner: str) -> None:
        with _guard("unlock"):
            await self._unlock(keys=[f"{self.key(session_id)}:lock"], args=[owner])

    async def commit(self, state: SessionState, version: str) -> CommitResult:
        images = [f"{self.prefix}:img:{i}" for i in dict.fromkeys(state.image_ids())]
        keys = [self.key(state.session_id), self._index, self._expiry, *images]
        args: list[str | bytes | int] = [
            version,
            encode_session(state),
            state.ttl_seconds,
            self._expires_ms(state),
            state.cursor(),
        ]
        with _guard("commit"):
            result = int(await self._commit(keys=keys, args=args))
        return "ok" if result == 1 else "conflict" if result == 0 else "gone"

    async def close(self) -> None:
        await self.client.aclose()
