"""The caller's deadline, carried through every stage and passed on to every downstream hop.

gRPC Python does not propagate deadlines by itself: the servicer turns
``context.time_remaining()`` into a ``Deadline`` and each hop asks it for its timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tandem.errors import DeadlineExceeded


@dataclass(frozen=True)
class Deadline:
    """An absolute point on the monotonic clock, or none (``at is None``)."""

    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """A deadline ``seconds`` from now; ``None`` means no deadline."""
        return cls(None if seconds is None else time.monotonic() + seconds)

    def capped(self, seconds: float) -> Deadline:
        """This deadline or one ``seconds`` from now, whichever comes first; 0 means no cap."""
        if seconds <= 0:
            return self
        cap = time.monotonic() + seconds
        return self if self.at is not None and self.at <= cap else Deadline(cap)

    def remaining(self) -> float | None:
        """Seconds left (raises ``DeadlineExceeded`` when none are), or None without a deadline."""
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("deadline exceeded before the request could finish")
        return left

    def cap(self, seconds: float) -> float:
        """``seconds`` or the time left, whichever is shorter."""
        left = self.remaining()
        return seconds if left is None else min(seconds, left)

    def binds(self, seconds: float) -> bool:
        """True when the deadline, not ``seconds``, is the shorter limit."""
        left = self.remaining()
        return left is not None and left < seconds
