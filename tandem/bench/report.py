"""The record of a benchmark run: one JSON file, a short table, and the ratio table of two runs.

The JSON document holds ``benchmark`` ("serve" or "hf"), ``measured_at``, ``command_line``,
``config`` (every option of the run), ``machine`` (platform, CPU, usable cores, memory, library
versions), ``server`` (base URL and model, or the checkpoint of the in-process arm), ``metrics``
(``BenchmarkMetrics``: times in ms), ``requests`` (one record per request, without text) and,
with ``--metrics-url``, ``server_stages`` (the server's time per stage: ``tandem.bench.scrape``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from tandem.bench.metrics import BenchmarkMetrics, RequestRecord

PACKAGES = ("tandem", "torch", "transformers", "tokenizers", "grpcio", "protobuf", "redis", "aiohttp", "vllm")
DEFAULT_RESULT_DIR = Path("bench/results")

# (label, path in the metrics, unit); the rows of the run table and of the comparison.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("completed requests", "completed", ""),
    ("failed requests", "failed", ""),
    ("duration", "duration_s", "s"),
    ("request throughput", "request_throughput", "req/s"),
    ("output token throughput", "output_throughput", "tok/s"),
    ("total token throughput", "total_token_throughput", "tok/s"),
    ("goodput", "goodput", "req/s"),
    ("TTFT mean", "ttft.mean", "ms"),
    ("TTFT median", "ttft.median", "ms"),
    ("TTFT p90", "ttft.p90", "ms"),
    ("TTFT p99", "ttft.p99", "ms"),
    ("TPOT mean", "tpot.mean", "ms"),
    ("TPOT median", "tpot.median", "ms"),
    ("TPOT p99", "tpot.p99", "ms"),
    ("ITL mean", "itl.mean", "ms"),
    ("ITL median", "itl.median", "ms"),
    ("ITL p99", "itl.p99", "ms"),
    ("E2E latency mean", "e2el.mean", "ms"),
    ("E2E latency median", "e2el.median", "ms"),
    ("E2E latency p90", "e2el.p90", "ms"),
    ("E2E latency p99", "e2el.p99", "ms"),
)


def machine() -> dict[str, Any]:
    """Where the figures were measured: platform, CPU model, usable cores, memory, versions."""
    import psutil

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": {name: _version(name) for name in PACKAGES},
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def document(
    benchmark: str,
    config: Any,
    server: Mapping[str, Any],
    metrics: BenchmarkMetrics,
    records: Sequence[RequestRecord],
) -> dict[str, Any]:
    """The JSON document of one run (see the module docstring)."""
    return {
        "benchmark": benchmark,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command_line": shlex.join(["tandem", *sys.argv[1:]]),
        "config": _jsonable(dataclasses.asdict(config)),
        "machine": machine(),
        "server": dict(server),
        "metrics": _jsonable(dataclasses.asdict(metrics)),
        "requests": [_jsonable(_without_text(dataclasses.asdict(r))) for r in records],
    }


def _without_text(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "text"}


def _jsonable(value: Any) -> Any:
    """Tuples as lists, and ``inf`` (a rate) as the string "inf", so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if k != "api_key"}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)
    return value


def write(doc: Mapping[str, Any], result_dir: Path, filename: str | None = None) -> Path:
    """Write ``doc`` under ``result_dir`` (``<benchmark>-<dataset>-<time>.json`` by default)."""
    result_dir.mkdir(parents=True, exist_ok=True)
    dataset = doc["config"].get("dataset", {}).get("name", "run")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = result_dir / (filename or f"{doc['benchmark']}-{dataset}-{stamp}.json")
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


def lookup(metrics: Mapping[str, Any], path: str) -> float | None:
    """``lookup(m, "ttft.median")`` -> ``m["ttft"]["median"]`` (``None`` when absent)."""
    value: Any = metrics
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return None if value is None else float(value)


def print_run(doc: Mapping[str, Any], out: TextIO = sys.stdout) -> None:
    """The short table of one run, then TTFT per turn for multi-turn runs."""
    metrics = doc["metrics"]
    rows = [[label, _number(lookup(metrics, path)), unit] for label, path, unit in ROWS]
    turns = metrics.get("ttft_by_turn") or []
    if len(turns) > 1:
        rows += [[f"TTFT median, turn {i + 1}", _number(t["median"]), "ms"] for i, t in enumerate(turns)]
    print_table(["metric", "value", "unit"], rows, out)


def print_comparison(a: Mapping[str, Any], b: Mapping[str, Any], out: TextIO = sys.stdout) -> None:
    """The metrics of two runs side by side with the ratio B / A."""
    rows = []
    for label, path, unit in ROWS:
        first, second = lookup(a["metrics"], path), lookup(b["metrics"], path)
        ratio = second / first if first and second is not None else None
        rows.append([label, _number(first), _number(second), _ratio(ratio), unit])
    turns = zip(a["metrics"].get("ttft_by_turn") or [], b["metrics"].get("ttft_by_turn") or [], strict=False)
    for index, (first_turn, second_turn) in enumerate(turns):
        first, second = first_turn["median"], second_turn["median"]
        ratio = second / first if first else None
        rows.append([f"TTFT median, turn {index + 1}", _number(first), _number(second), _ratio(ratio), "ms"])
    print_table(["metric", "A", "B", "B / A", "unit"], rows, out)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO = sys.stdout) -> None:
    """A plain fixed-width table."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
        if index == 0:
            print("  ".join("-" * w for w in widths), file=out)
