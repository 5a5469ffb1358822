"""``Stopwatch``: stretches of one piece of work add up to one histogram observation."""

from __future__ import annotations

import time

import pytest

from tandem.metrics import Metrics
from tandem.metrics.stopwatch import Stopwatch


def test_stretches_add_up_to_one_observation() -> None:
    watch, metrics = Stopwatch(), Metrics()
    with watch.timing():
        time.sleep(0.001)
    with pytest.raises(RuntimeError), watch.timing():  # a block that raises is timed too
        time.sleep(0.001)
        raise RuntimeError
    assert watch.stretches == 2 and watch.seconds > 0
    watch.observe(metrics, "vision_cache_seconds")
    assert metrics.get("vision_cache_seconds") == 1
    assert metrics.snapshot()["vision_cache_seconds_sum"] == watch.seconds


def test_nothing_timed_is_not_observed() -> None:
    metrics = Metrics()
    Stopwatch().observe(metrics, "vision_cache_seconds")
    assert metrics.get("vision_cache_seconds") == 0
