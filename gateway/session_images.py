"""The bytes of session images, kept in the state role so that a session stays answerable.

Why here and not only in the cache: a session's history names its images by id, and every
turn sends them to the vision service again (``Pipeline.prepare``). The vision service answers
from the cache: a cached embedding, or the image's bytes (``{prefix}:img:{id}``) from which it
recomputes an evicted embedding. Both live in the *cache* role, which is bounded and LRU
(``allkeys-lru``) and keeps the bytes of a request without a session for ``--image-ttl-seconds``
only. Cache pressure (a flood of large stateless images) can therefore evict the bytes of a
session image, and then no turn of that session could be answered again. So the gateway keeps
a copy of each session image's bytes in the *state* role, which never evicts:

- ``keep`` (called by ``Gateway.chat`` once a turn's images are encoded, before it generates)
  writes ``{prefix}:session-image:{id}`` with at least the session's TTL. New bytes come from
  the request; an image named by id comes from the cache, where the vision service just read it.
- Every commit of the session extends those keys to at least the session TTL, in the same
  atomic script that writes the record (``gateway.session_redis``). The key was written, with
  the session's TTL, after the record's last refresh, so it outlives the record until that
  commit, and each commit renews both: an image of a live session always has its bytes.
- ``recall`` gives them back: when the vision service answers NOT_FOUND for a history image
  (its cached bytes are gone), the pipeline sends the kept bytes instead
  (``Pipeline.prepare``); the vision service recomputes the embedding and caches it again.

The keys are content addressed (several sessions may hold one image; its TTL is the longest
they need) and expire with the last session holding them: deleting a session leaves them to
expire. A turn that fails after ``keep`` leaves its bytes to expire the same way. The state
Redis must not evict (``gateway.dependencies``); its memory is bounded by the per-tenant
stored-bytes limit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tandem.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

GONE_MESSAGE = "an image of this turn is no longer stored; send the image bytes again"

# KEYS: session image keys; ARGV: ttl, then one value per key ("" = extend only)
# Each key is kept for at least ttl seconds: extended if present, else written when a value
# is given. -> the 1-based positions of keys that are absent and had no value.
_KEEP = """
local ttl = tonumber(ARGV[1])
local missing = {}
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local left = redis.call('TTL', KEYS[i])
    if left >= 0 and left < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
  elseif ARGV[i + 1] ~= '' then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
  else
    missing[#missing + 1] = i
  end
end
return missing
"""


def session_image_key(prefix: str, image_id: str) -> str:
    """Where the state role keeps a session image's bytes."""
    return f"{prefix}:session-image:{image_id}"


class SessionImages(Protocol):
    """The bytes of session images (module docstring); ``None`` bytes: named by id."""

    async def keep(self, images: Sequence[tuple[str, bytes | None]], ttl_seconds: int) -> None:
        """Keep each image for at least ``ttl_seconds``; ``NotFound`` when an image named by id
        has no bytes left anywhere, ``Unavailable`` when the state store cannot be reached."""
        ...

    async def recall(self, image_ids: Sequence[str]) -> dict[str, bytes]:
        """The kept bytes of those of ``image_ids`` still kept (unknown ids are left out)."""
        ...


@contextlib.contextmanager
def _guard(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("session image %s failed: %s", what, type(exc).__name__)
        raise Unavailable("the session store is unavailable; retry later") from None


class RedisSessionImages:
    """Session images in the state Redis; images named by id are read from the cache Redis."""

    def __init__(self, state: aioredis.Redis, cache: aioredis.Redis | None, prefix: str = "tandem"):
        self.state = state
        self.cache = cache
        self.prefix = prefix
        self._keep = state.register_script(_KEEP)

    def key(self, image_id: str) -> str:
        return session_image_key(self.prefix, image_id)

    async def keep(self, images: Sequence[tuple[str, bytes | None]], ttl_seconds: int) -> None:
        wanted = dict(images)
        if not wanted:
            return
        ids = list(wanted)
        with _guard("keep"):  # extend what is kept; only absent images travel
            missing = cast(
                list[int],
                await self._keep(keys=[self.key(i) for i in ids], args=[ttl_seconds, *[""] * len(ids)]),
            )
        absent = [ids[i - 1] for i in missing]
        if not absent:
            return
        found = {i: wanted[i] or await self._from_cache(i) for i in absent}
        with _guard("keep"):
            await self._keep(keys=[self.key(i) for i in absent], args=[ttl_seconds, *found.values()])

    async def _from_cache(self, image_id: str) -> bytes:
        """The bytes the vision service cached for an image named by id."""
        value: bytes | None = None
        if self.cache is not None:
            try:
                value = cast(bytes | None, await self.cache.get(f"{self.prefix}:img:{image_id}"))
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("reading an image from the cache failed: %s", type(exc).__name__)
        if not value:
            raise NotFound(GONE_MESSAGE)
        return value

    async def recall(self, image_ids: Sequence[str]) -> dict[str, bytes]:
        ids = list(dict.fromkeys(image_ids))
        if not ids:
            return {}
        with _guard("recall"):
            values = cast(list[bytes | None], await self.state.mget([self.key(i) for i in ids]))
        return {i: v for i, v in zip(ids, values, strict=True) if v is not None}


class MemorySessionImages:
    """``SessionImages`` in process memory (tests, a dev gateway with the memory store); an
    image named by id is looked up in ``cache`` (image id -> bytes), if given."""

    def __init__(self, cache: dict[str, bytes] | None = None, clock: Callable[[], float] = time.monotonic):
        self.cache = cache if cache is not None else {}
        self._clock = clock
        self._kept: dict[str, tuple[bytes, float]] = {}

    async def keep(self, images: Sequence[tuple[str, bytes | None]], ttl_seconds: int) -> None:
        until = self._clock() + ttl_seconds
        for image_id, data in images:
            kept = self._kept.get(image_id)
            if kept is not None and kept[1] > self._clock():
                self._kept[image_id] = (kept[0], max(kept[1], until))
                continue
            value = data or self.cache.get(image_id)
            if not value:
                raise NotFound(GONE_MESSAGE)
            self._kept[image_id] = (value, until)

    async def recall(self, image_ids: Sequence[str]) -> dict[str, bytes]:
        now = self._clock()
        return {i: kept[0] for i in image_ids if (kept := self._kept.get(i)) is not None and kept[1] > now}
