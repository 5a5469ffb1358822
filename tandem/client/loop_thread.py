"""``LoopThread``: a private asyncio event loop in a daemon thread, for the sync client.

The sync ``Pipeline`` runs the ``AsyncPipeline``'s coroutines here, so it works the same from
plain scripts, from threads and from programs (notebooks) that already run an event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long an interrupted call may take to unwind on the loop before the caller moves on.
_CANCEL_WAIT_SECONDS = 5.0

_DONE = object()


async def _next(iterator: AsyncIterator[T]) -> T | object:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _DONE


class LoopThread:
    """Owns one event loop thread from construction until ``stop()``."""

    def __init__(self, name: str = "tandem-client"):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (Ctrl-C cancels it)."""
        if not self.running:
            coro.close()
            raise RuntimeError("the pipeline is closed")
        future: concurrent.futures.Future[T] | None = None
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            return future.result()
        except BaseException:
            if future is not None:
                # Let the cancelled coroutine unwind before anything else runs on the loop: an
                # iterator's ``aclose`` must not start while its ``__anext__`` is still running.
                future.cancel()
                concurrent.futures.wait([future], timeout=_CANCEL_WAIT_SECONDS)
            raise

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """Iterate an async iterator from this thread; leaving early closes it (and its call)."""
        try:
            while True:
                item = self.run(_next(iterator))
                if item is _DONE:
                    return
                yield item  # type: ignore[misc]
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and self.running:
                try:
                    self.run(aclose())
                except RuntimeError as exc:  # interrupted before its step could be cancelled
                    log.debug("stream not closed at once: %s", exc)

    def stop(self) -> None:
        """Stop the loop and join the thread; idempotent."""
        if self.running:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        if not self._loop.is_closed():
            self._loop.close()
