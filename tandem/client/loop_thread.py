"""``LoopThread``: a private asyncio event loop in a daemon thread, for the sync client.

The sync ``Pipeline`` runs the ``AsyncPipeline``'s coroutines here, so it works the same from
plain scripts, from threads and from programs (notebooks) that already run an event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


_DONE = object()


async def _next(iterator: AsyncIterator[T], steps: set[asyncio.Task[Any]]) -> T | object:
    """One step of ``iterator``; the running step is in ``steps`` (registered on the loop, so a
    Ctrl-C in the calling thread can never lose track of it)."""
    task = asyncio.current_task()
    if task is not None:
        steps.add(task)
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _DONE
    finally:
        steps.discard(task)  # type: ignore[arg-type]


async def _close(iterator: AsyncIterator[Any], steps: set[asyncio.Task[Any]]) -> None:
    """Cancel a step still running (the caller was interrupted), then close the iterator."""
    running = list(steps)
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


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
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # a step of ``iterate`` is also cancelled by ``_close``, in order
            raise

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """Iterate an async iterator from this thread; leaving early closes it (and its call)."""
        steps: set[asyncio.Task[Any]] = set()
        try:
            while True:
                item = self.run(_next(iterator, steps))
                if item is _DONE:
                    return
                yield item  # type: ignore[misc]
        finally:
            if self.running:
                self.run(_close(iterator, steps))

    def stop(self) -> None:
        """Stop the loop and join the thread; idempotent."""
        if self.running:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        if not self._loop.is_closed():
            self._loop.close()
