"""``Stopwatch``: the time of one piece of work spread over several stretches, observed once.

A request's Redis traffic, say, happens in a few round trips with other work between them; a
``Stopwatch`` adds up the stretches (``with watch.timing(): ...``) so that the histogram gets one
observation per request (``watch.observe(metrics, key)``). Stretches that overlap (concurrent
tasks) are each counted whole. One event loop or thread at a time: not locked.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from tandem.metrics.registry import Metrics


class Stopwatch:
    """Seconds summed over the ``timing`` blocks run so far."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.stretches = 0

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Add the time the block takes (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start
            self.stretches += 1

    def observe(self, metrics: Metrics, key: str) -> None:
        """One observation of the summed seconds into histogram ``key``; none if nothing was timed."""
        if self.stretches:
            metrics.observe(key, self.seconds)
