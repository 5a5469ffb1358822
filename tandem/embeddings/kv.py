"""Key-value storage behind a small interface, with a Redis and an in-memory implementation.

``RedisStore`` never waits on redis-py's retries: every command has a short timeout and no
retry, and a circuit breaker skips Redis entirely while it is down. Failures are reported as
``StoreUnavailable`` so callers can fall back (compute, hand over inline) instead of failing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tandem.embeddings.breaker import CircuitBreaker

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The store could not be reached in time (or its breaker is open)."""


class KeyValueStore(Protocol):
    """What the caches and the session store need from storage."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def peek(self, keys: Sequence[str], size: int) -> list[tuple[bytes | None, int]]:
        """The first ``size`` (>= 1) bytes and the full length of each value; (None, 0) if absent."""
        ...

    async def put_many(self, items: Sequence[tuple[str, bytes | memoryview]], ttl_seconds: int) -> None: ...

    async def delete(self, *keys: str) -> None: ...

    async def put_if_absent(self, key: str, value: bytes, ttl_seconds: float) -> bool: ...

    async def delete_if_equal(self, key: str, value: bytes) -> bool: ...

    async def touch(self, keys: Sequence[str], ttl_seconds: int) -> None: ...

    async def close(self) -> None: ...


_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def connect_redis(url: str, timeout_seconds: float = 0.5) -> aioredis.Redis:
    """A Redis client with short timeouts and no retries (the breaker decides instead)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class RedisStore:
    """``KeyValueStore`` on Redis, guarded by a circuit breaker."""

    def __init__(self, client: aioredis.Redis, breaker: CircuitBreaker | None = None):
        self.client = client
        self.breaker = breaker or CircuitBreaker()

    async def _run(self, what: str, coro_factory):  # type: ignore[no-untyped-def]
        if not self.breaker.allow():
            raise StoreUnavailable("cache circuit open")
        try:
            result = await coro_factory()
        except (RedisError, OSError, TimeoutError) as exc:
            self.breaker.record_failure()
            log.warning("redis %s failed: %s", what, type(exc).__name__)
            raise StoreUnavailable(what) from exc
        self.breaker.record_success()
        return result

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return await self._run("get", lambda: self.client.mget(list(keys)))

    async def peek(self, keys: Sequence[str], size: int) -> list[tuple[bytes | None, int]]:
        async def read() -> list[bytes | int]:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.exists(key)  # an empty value exists; a missing one does not
                pipe.getrange(key, 0, size - 1)
                pipe.strlen(key)
            return await pipe.execute()  # type: ignore[no-any-return]

        if not keys:
            return []
        replies = await self._run("peek", read)
        found = zip(replies[::3], replies[1::3], replies[2::3], strict=True)
        return [(bytes(head), int(length)) if exists else (None, 0) for exists, head, length in found]

    async def put_many(self, items: Sequence[tuple[str, bytes | memoryview]], ttl_seconds: int) -> None:
        async def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, bytes(value) if isinstance(value, memoryview) else value, ex=ttl_seconds)
            await pipe.execute()

        await self._run("set", write)

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._run("delete", lambda: self.client.delete(*keys))

    async def put_if_absent(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        ms = max(1, int(ttl_seconds * 1000))
        return bool(await self._run("lease", lambda: self.client.set(key, value, px=ms, nx=True)))

    async def delete_if_equal(self, key: str, value: bytes) -> bool:
        """Delete ``key`` only while it still holds ``value`` (atomic, for lease owners)."""
        deleted = await self._run("release", lambda: self.client.eval(_DELETE_IF_EQUAL, 1, key, value))
        return bool(deleted)

    async def touch(self, keys: Sequence[str], ttl_seconds: int) -> None:
        async def expire() -> None:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.expire(key, ttl_seconds)
            await pipe.execute()

        if keys:
            await self._run("expire", expire)

    async def close(self) -> None:
        await self.client.aclose()


class MemoryStore:
    """``KeyValueStore`` in a dict, for logic tests (TTLs honoured on read)."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, float]] = {}

    def _live(self, key: str) -> bytes | None:
        item = self.data.get(key)
        if item is None or item[1] < time.monotonic():
            self.data.pop(key, None)
            return None
        return item[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self._live(k) for k in keys]

    async def peek(self, keys: Sequence[str], size: int) -> list[tuple[bytes | None, int]]:
        values = [self._live(k) for k in keys]
        return [(None, 0) if v is None else (v[:size], len(v)) for v in values]

    async def put_many(self, items: Sequence[tuple[str, bytes | memoryview]], ttl_seconds: int) -> None:
        for key, value in items:
            self.data[key] = (bytes(value), time.monotonic() + ttl_seconds)

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self.data.pop(key, None)

    async def put_if_absent(self, key: str, value: bytes, ttl_seconds: float) -> bool:
        if self._live(key) is not None:
            return False
        self.data[key] = (value, time.monotonic() + ttl_seconds)
        return True

    async def delete_if_equal(self, key: str, value: bytes) -> bool:
        if self._live(key) != value:
            return False
        del self.data[key]
        return True

    async def touch(self, keys: Sequence[str], ttl_seconds: int) -> None:
        for key in keys:
            if (value := self._live(key)) is not None:
                self.data[key] = (value, time.monotonic() + ttl_seconds)

    async def close(self) -> None:
        self.data.clear()
