"""Helpers every benchmark shares: interleaved timing, percentiles, the JSON result, a table.

A figure counts only as a ratio against a baseline measured in the same run: arms run in
interleaved blocks (A B A B ...) after a warm-up, so drift and noise from the shared machine hit
both alike. Each benchmark writes one JSON file under ``bench/results/`` with both arms, the
ratio, the machine and the library versions.
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tandem.bench.report import machine

RESULTS = Path(__file__).resolve().parent / "results"


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of ``samples``."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(samples: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p90 (and p99 with 100+ samples) of ``samples`` in seconds."""
    out = {
        "n": len(samples),
        "mean": statistics.fmean(samples),
        "p50": percentile(samples, 50),
        "p90": percentile(samples, 90),
    }
    if len(samples) >= 100:
        out["p99"] = percentile(samples, 99)
    return out


def interleaved(
    arms: Mapping[str, Callable[[], object]], *, blocks: int = 20, per_block: int = 10, warmup: int = 5
) -> dict[str, list[float]]:
    """Per-call wall times of each arm, run in alternating blocks after ``warmup`` calls each.

    The garbage collector is off inside a block (collected before it), as in ``timeit``.
    """
    for fn in arms.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for block in range(blocks):
        order = list(arms.items())
        if block % 2:
            order.reverse()
        for name, fn in order:
            gc.collect()  # as timeit does: no collector pause inside a timed call
            gc.disable()
            try:
                for _ in range(per_block):
                    started = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - started)
            finally:
                gc.enable()
    return samples


def write_result(name: str, payload: Mapping[str, Any], results: Path = RESULTS) -> Path:
    """Write ``results/<name>.json`` with the payload plus machine and time; returns the path."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    document = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **payload}
    document["machine"] = machine()
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def format_seconds(value: float) -> str:
    """Seconds in the unit that reads best (ns, us, ms, s)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
