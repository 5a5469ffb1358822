"""The gateway's budget of request bytes in flight, shared by its gRPC and HTTP listeners.

Each request holds its size (an HTTP body as announced by ``Content-Length``, or the most a
body may be when it comes chunked; a gRPC ``Generate``/``Chat`` message) from before it is
parsed until its answer ends. A request that does not fit in what is left waits up to
``wait_seconds`` for others to finish, then is refused with ``Overloaded`` (RESOURCE_EXHAUSTED,
HTTP 429), so concurrent large uploads cannot take the gateway's memory past ``limit`` plus what
decoding one request adds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tandem.errors import Overloaded

FULL_MESSAGE = "the gateway holds too many request bytes right now (--max-inflight-bytes); retry shortly"


class InflightBytes:
    """Bytes held by running requests, at most ``limit``; one event loop only."""

    def __init__(self, limit: int, wait_seconds: float = 2.0):
        if limit < 1 or wait_seconds < 0:
            raise ValueError(f"{limit=} must be >= 1 and {wait_seconds=} >= 0")
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.used = 0
        self._freed = asyncio.Event()  # set (and replaced) whenever bytes are given back

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes for the body of the block; ``Overloaded`` when they do not fit."""
        await self._take(size)
        try:
            yield
        finally:
            self._give(size)

    async def _take(self, size: int) -> None:
        if size > self.limit:
            raise Overloaded(FULL_MESSAGE)
        try:
            async with asyncio.timeout(self.wait_seconds):
                while self.used + size > self.limit:
                    await self._freed.wait()
        except TimeoutError:
            raise Overloaded(FULL_MESSAGE) from None
        self.used += size

    def _give(self, size: int) -> None:
        self.used -= size
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()
