"""When each conversation of a run starts: a Poisson process at a rate, or all at once."""

from __future__ import annotations

import math
import random


def arrival_times(count: int, rate: float, seed: int) -> list[float]:
    """Start offsets in seconds of ``count`` conversations: exponential gaps of mean ``1 / rate``
    (a Poisson process, seeded), or all zero when ``rate`` is infinite."""
    if not rate > 0:
        raise ValueError(f"{rate=} must be > 0 (inf: all at once)")
    if math.isinf(rate):
        return [0.0] * count
    rng = random.Random(f"tandem-bench-arrivals:{seed}")
    times, now = [], 0.0
    for _ in range(count):
        times.append(now)
        now += rng.expovariate(rate)
    return times
