"""Single flight: one encode per new image, within a process and across replicas.

In process: ``SingleFlight`` keeps one flight (a future and a count of waiting callers) per
image id. A caller's new ids go to one work task together; ids already in flight are awaited.
The work runs in its own task and callers await through ``asyncio.shield``, so one caller
leaving never cancels the others' result. When the last caller of an id leaves (its deadline
passed, the client went away, or its request failed), that id's future is cancelled, which the
work sees through ``wanted(id)``: it neither encodes nor stores an unwanted image. Once no id of
a work task is wanted, the task itself is cancelled (a queued encoder batch is then dropped).

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
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tandem.embeddings.cache import Embedding, EmbeddingCache
from tandem.embeddings.kv import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_SECONDS = 0.02

Wanted = Callable[[str], bool]
Work = Callable[[list[str], Wanted], Awaitable[dict[str, T | Exception]]]


@dataclass(eq=False)
class _Work(Generic[T]):
    """One work call: the futures of the keys it computes, and its asyncio task."""

    futures: dict[str, asyncio.Future[T]]
    task: asyncio.Future[Any] | None = None

    def wanted(self, key: str) -> bool:
        return not self.futures[key].cancelled()


@dataclass(eq=False)
class _Flight(Generic[T]):
    """One key in flight: its result future, the work computing it and how many callers wait."""

    key: str
    future: asyncio.Future[T]
    work: _Work[T]
    waiters: int = 0


class SingleFlight(Generic[T]):
    """At most one running computation per key in this process, dropped when nobody waits."""

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def waiters(self, key: str) -> int:
        """Callers waiting for ``key`` now (0 when it is not in flight)."""
        flight = self._flights.get(key)
        return 0 if flight is None else flight.waiters

    async def run(self, keys: list[str], work: Work[T]) -> list[T]:
        """Results for ``keys`` (distinct), computing those nobody computes yet in one ``work``.

        ``work(new_keys, wanted)`` returns a result or an exception per key; a key it leaves out,
        or an exception raised by ``work``, fails that key. ``wanted(key)`` turns False once no
        caller waits for ``key`` any more. One call hands all of a request's new images to one
        ``work``, so they can share one encoder forward.
        """
        flights = self._join(keys, work)
        try:
            return list(await asyncio.gather(*(asyncio.shield(f.future) for f in flights)))
        finally:
            self._leave(flights)

    def _join(self, keys: list[str], work: Work[T]) -> list[_Flight[T]]:
        loop = asyncio.get_running_loop()
        flights: list[_Flight[T]] = []
        started: _Work[T] = _Work({})
        for key in keys:
            flight = self._flights.get(key)
            if flight is None:
                flight = _Flight(key, loop.create_future(), started)
                started.futures[key] = flight.future
                self._flights[key] = flight
            flight.waiters += 1
            flights.append(flight)
        if started.futures:
            new = list(started.futures)
            started.task = asyncio.ensure_future(work(new, started.wanted))
            started.task.add_done_callback(lambda t: self._settle(started, t))
        return flights

    def _leave(self, flights: list[_Flight[T]]) -> None:
        """Drop one waiter from each flight; cancel what nobody waits for any more."""
        for flight in flights:
            flight.waiters -= 1
            if flight.waiters > 0 or flight.future.done():
                continue
            flight.future.cancel()
            self._forget(flight)
            work = flight.work
            if work.task is not None and all(f.done() for f in work.futures.values()):
                work.task.cancel()

    def _forget(self, flight: _Flight[T]) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    def _settle(self, work: _Work[T], task: asyncio.Future[dict[str, T | Exception]]) -> None:
        for key in work.futures:
            flight = self._flights.get(key)
            if flight is not None and flight.work is work:
                self._forget(flight)
        error = None if task.cancelled() else task.exception()
        results = {} if error is not None or task.cancelled() else task.result()
        for key, future in work.futures.items():
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
        await self.cache.release_lease(image_id, self.owner)

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


class HeldLeases:
    """The leases one leader task holds: each is released exactly once, however the task ends."""

    def __init__(self, lease: ReplicaLease | None):
        self.lease = lease
        self._held: set[str] = set()

    async def claim(self, image_id: str) -> bool:
        """``ReplicaLease.claim``, remembering a lease this task got (no lease: always True)."""
        claimed = self.lease is None or await self.lease.claim(image_id)
        if claimed:
            self._held.add(image_id)
        return claimed

    async def wait(self, image_id: str) -> Embedding | None:
        """``ReplicaLease.wait``: the holder's result, or None = encode here (lease kept if got)."""
        if self.lease is None:
            return None
        embedding, claimed = await self.lease.wait(image_id)
        if claimed:
            self._held.add(image_id)
        return embedding

    async def release(self, image_ids: list[str] | None = None) -> None:
        """Release the held leases of ``image_ids`` (None: all of them)."""
        mine = list(self._held) if image_ids is None else [i for i in image_ids if i in self._held]
        self._held.difference_update(mine)
        if self.lease is not None and mine:
            await asyncio.gather(*(self.lease.release(i) for i in mine))
