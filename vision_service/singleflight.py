"""Single flight: one encode per new image, within a process and across replicas.

In process: ``SingleFlight`` keeps one future per image id. The first caller (the leader) starts
the work and the work settles the future; later callers for the same id await it. The work runs
in its own task, so a cancelled caller never cancels the others' result (callers await the
futures through ``asyncio.shield``).

Across replicas: ``ReplicaLease`` claims ``lease:{fingerprint}:{image_id}`` in Redis (SET NX PX)
before encoding. A replica that does not get it polls the (small) lease key; when the lease is
gone it reads the cache, and if the holder died or could not store the result, it claims the
lease itself. After ``wait_seconds`` it stops waiting and encodes anyway: no deadlock, at worst
one encode per replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from tandem.embeddings.cache import Embedding, EmbeddingCache
from tandem.embeddings.kv import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_SECONDS = 0.02


class SingleFlight(Generic[T]):
    """At most one running computation per key in this process."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def join(
        self, keys: list[str], work: Callable[[list[str]], Awaitable[dict[str, T | Exception]]]
    ) -> list[asyncio.Future[T]]:
        """Futures for ``keys``; the keys nobody is computing yet go to one ``work`` call together.

        ``work(new_keys)`` returns a result or an exception per key; a key it leaves out, or an
        exception raised by ``work``, fails that key's future. One call hands all of a request's
        new images to one ``work``, so they can share one encoder forward.
        """
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[T]] = {}
        new: list[str] = []
        for key in keys:
            if key not in futures:
                known = self._flights.get(key)
                if known is None:
                    known = loop.create_future()
                    self._flights[key] = known
                    new.append(key)
                futures[key] = known
        if new:
            task = asyncio.ensure_future(work(new))
            task.add_done_callback(lambda t: self._settle(new, {k: futures[k] for k in new}, t))
        return [futures[k] for k in keys]

    def _settle(
        self,
        keys: list[str],
        futures: dict[str, asyncio.Future[T]],
        task: asyncio.Future[dict[str, T | Exception]],
    ) -> None:
        for key in keys:
            self._flights.pop(key, None)
        error = None if task.cancelled() else task.exception()
        results = {} if error is not None or task.cancelled() else task.result()
        for key, future in futures.items():
            if future.done():
                continue
            if task.cancelled():
                future.cancel()
            elif error is not None:
                future.set_exception(error)
            elif isinstance(result := results.get(key, KeyError(key)), Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


class ReplicaLease:
    """Claims, waits for and releases the cross-replica encode lease of an image."""

    def __init__(self, cache: EmbeddingCache, lease_seconds: float, wait_seconds: float):
        self.cache = cache
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.owner = uuid.uuid4().hex

    async def claim(self, image_id: str) -> bool:
        """True when this replica should encode ``image_id`` now (also when Redis is down)."""
        return await self.cache.try_lease(image_id, self.owner, self.lease_seconds)

    async def release(self, image_id: str) -> None:
        await self.cache.release_lease(image_id)

    async def wait(self, image_id: str) -> tuple[Embedding | None, bool]:
        """Wait for the holder's result: (embedding, False), or (None, holds_lease) = encode here."""
        deadline = time.monotonic() + self.wait_seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            try:
                (lease,) = await self.cache.store.get_many([self.cache.lease_key(image_id)])
            except StoreUnavailable:
                return None, False
            if lease is not None:
                continue
            embedding = await self.cache.get(image_id)
            if embedding is not None:
                return embedding, False
            if await self.claim(image_id):
                return None, True
        log.warning("gave up waiting for another replica to encode %s", image_id[:12])
        return None, False
