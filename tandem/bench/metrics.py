"""What a benchmark run measured: per-request timings in, distributions and throughputs out.

Definitions follow ``vllm bench serve`` so figures compare with the field:

- TTFT: from sending the request to the first chunk that carries generated text;
- ITL: the gaps between successive text chunks of one request;
- TPOT: ``(latency - ttft) / (output_tokens - 1)`` per request with more than one output token;
- E2EL: from sending the request to its last byte;
- throughputs: completed requests, output tokens and all tokens per second of the run's duration;
- goodput: completed requests per second that met every SLO given (``ttft``, ``tpot``, ``e2el``).

Distributions are reported in milliseconds: mean, median, p90, p99 (linear interpolation between
ranks, as ``numpy.percentile``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

SLO_NAMES = ("ttft", "tpot", "e2el")


def percentile(samples: Sequence[float], q: float) -> float:
    """Percentile ``q`` in [0, 100] of ``samples``, interpolated linearly between ranks."""
    if not samples:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"{q=} must be in [0, 100]")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Distribution:
    """Summary of one quantity over the requests, in milliseconds (all zero with no samples)."""

    count: int = 0
    mean: float = 0.0
    median: float = 0.0
    p90: float = 0.0
    p99: float = 0.0

    @classmethod
    def of_seconds(cls, samples: Sequence[float]) -> Distribution:
        if not samples:
            return cls()
        ms = [s * 1000 for s in samples]
        return cls(len(ms), statistics.fmean(ms), percentile(ms, 50), percentile(ms, 90), percentile(ms, 99))


@dataclass(frozen=True)
class Slo:
    """Service-level objectives in milliseconds; ``None`` = not set. Parsed from ``ttft:500``-style
    items as ``vllm bench serve --goodput`` takes them."""

    ttft: float | None = None
    tpot: float | None = None
    e2el: float | None = None

    def __post_init__(self) -> None:
        for name in SLO_NAMES:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"the {name} SLO must be > 0 ms; got {value}")

    @classmethod
    def parse(cls, items: Sequence[str]) -> Slo | None:
        """``["ttft:500", "tpot:50"]`` -> ``Slo(ttft=500, tpot=50)``; no items -> ``None``."""
        values: dict[str, float] = {}
        for item in items:
            name, sep, number = item.partition(":")
            if not sep or name not in SLO_NAMES:
                raise ValueError(f"bad goodput item {item!r}: expected NAME:MS with NAME in {SLO_NAMES}")
            try:
                values[name] = float(number)
            except ValueError:
                raise ValueError(f"bad goodput item {item!r}: {number!r} is not a number") from None
        return cls(**values) if values else None

    def met_by(self, request: RequestRecord) -> bool:
        """True when ``request`` succeeded within every objective set (TPOT counts as met for a
        request with one output token, which has none)."""
        if not request.success:
            return False
        tpot = request.tpot
        return (
            (self.ttft is None or request.ttft * 1000 <= self.ttft)
            and (self.tpot is None or tpot is None or tpot * 1000 <= self.tpot)
            and (self.e2el is None or request.latency * 1000 <= self.e2el)
        )


@dataclass
class RequestRecord:
    """One request as the client saw it. Times in seconds; ``started`` from the run's start."""

    conversation: int
    turn: int
    started: float = 0.0
    success: bool = False
    error: str = ""
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int = 0
    text: str = field(default="", repr=False)

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first; ``None`` with fewer than two tokens."""
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class BenchmarkMetrics:
    """The figures of one run (times in ms, throughputs per second of ``duration_s``)."""

    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float | None
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution
    ttft_by_turn: tuple[Distribution, ...]


def compute_metrics(records: Sequence[RequestRecord], duration_s: float, slo: Slo | None) -> BenchmarkMetrics:
    """The run's figures from its request records (failed requests count only in ``failed``)."""
    if duration_s <= 0:
        raise ValueError(f"{duration_s=} must be > 0")
    done = [r for r in records if r.success]
    inputs = sum(r.prompt_tokens or 0 for r in done)
    outputs = sum(r.output_tokens for r in done)
    turns = max((r.turn for r in records), default=-1) + 1
    return BenchmarkMetrics(
        completed=len(done),
        failed=len(records) - len(done),
        duration_s=duration_s,
        total_input_tokens=inputs,
        total_output_tokens=outputs,
        request_throughput=len(done) / duration_s,
        output_throughput=outputs / duration_s,
        total_token_throughput=(inputs + outputs) / duration_s,
        goodput=None if slo is None else sum(slo.met_by(r) for r in done) / duration_s,
        ttft=Distribution.of_seconds([r.ttft for r in done]),
        tpot=Distribution.of_seconds([t for r in done if (t := r.tpot) is not None]),
        itl=Distribution.of_seconds([gap for r in done for gap in r.itl]),
        e2el=Distribution.of_seconds([r.latency for r in done]),
        ttft_by_turn=tuple(
            Distribution.of_seconds([r.ttft for r in done if r.turn == turn]) for turn in range(turns)
        ),
    )
