"""A small circuit breaker for the shared cache.

Closed: calls go through. After ``failure_threshold`` consecutive failures it opens: calls are
skipped at once (the caller computes instead of waiting on a dead Redis) for ``reset_seconds``.
Then one trial call is let through (half-open); success closes it, failure opens it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class CircuitBreaker:
    """Consecutive-failure breaker; not thread-safe (used from one event loop)."""

    failure_threshold: int = 3
    reset_seconds: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _failures: int = field(default=0, init=False)
    _opened_at: float | None = field(default=None, init=False)

    def allow(self) -> bool:
        """True when a call may be attempted now."""
        if self._opened_at is None:
            return True
        if self.clock() - self._opened_at >= self.reset_seconds:
            self._opened_at = self.clock()  # half-open: one trial per reset period
            return True
        return False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def record_failure(self) -> None:
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._opened_at = self.clock()
