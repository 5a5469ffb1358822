"""Arrival times: all at once, or a seeded Poisson process at the rate asked for."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from tandem.bench.arrivals import arrival_times


def test_infinite_rate_starts_everything_at_once() -> None:
    assert arrival_times(5, math.inf, seed=0) == [0.0] * 5


def test_poisson_is_seeded_and_has_the_mean_gap() -> None:
    times = arrival_times(20_000, 4.0, seed=3)
    assert times == arrival_times(20_000, 4.0, seed=3)
    assert times != arrival_times(20_000, 4.0, seed=4)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0 and all(g >= 0 for g in gaps)
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.05)  # exponential: sd == mean


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate"):
        arrival_times(3, 0.0, seed=0)
