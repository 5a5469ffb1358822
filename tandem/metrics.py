"""Counters and latency summaries, kept in one place per process.

Each service owns one ``Metrics`` and passes it down; nothing is module-global. ``render``
writes the Prometheus text exposition format, so an HTTP endpoint can serve it as is.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class _Summary:
    count: int = 0
    total: float = 0.0


@dataclass
class Metrics:
    """Thread-safe counters (``inc``) and latency sums (``observe``) under a name prefix."""

    prefix: str = "tandem"
    _counters: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _summaries: dict[str, _Summary] = field(default_factory=lambda: defaultdict(_Summary))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inc(self, name: str, amount: float = 1.0) -> None:
        with self._lock:
            self._counters[name] += amount

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            summary = self._summaries[name]
            summary.count += 1
            summary.total += seconds

    def get(self, name: str) -> float:
        with self._lock:
            return self._counters.get(name, 0.0)

    def snapshot(self) -> dict[str, float]:
        """Counters plus ``<name>_count`` / ``<name>_sum`` of every summary."""
        with self._lock:
            out = dict(self._counters)
            for name, summary in self._summaries.items():
                out[f"{name}_count"] = summary.count
                out[f"{name}_sum"] = summary.total
            return out

    def render(self) -> str:
        """Prometheus text format."""
        lines = []
        for name, value in sorted(self.snapshot().items()):
            lines.append(f"{self.prefix}_{name} {value}")
        return "\n".join(lines) + "\n"
