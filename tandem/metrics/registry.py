"""``Metrics``: one service's Prometheus registry, written by name from anywhere in the service.

Each service owns one ``Metrics`` (its own ``CollectorRegistry``, never the client library's
global one, so several services share a test process) and passes it down to the parts that
count. Writers name a metric by its catalog key (``tandem.metrics.catalog``); an unknown key is
a ``KeyError``. A service's groups are registered at construction; a metric of another group is
registered on first use (a test's bare ``Metrics()`` starts empty). Readers: ``render`` for a
scrape, ``get``/``snapshot`` for tests and benchmarks. Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase

from tandem.metrics.catalog import SERVICE_GROUPS, SPECS, Group, MetricSpec

_KINDS: dict[str, type[MetricWrapperBase]] = {"counter": Counter, "gauge": Gauge}


class Metrics:
    """A registry of catalog metrics; see the module docstring."""

    def __init__(self, groups: Iterable[Group] = ()):
        self.registry = CollectorRegistry(auto_describe=True)
        self._collectors: dict[str, MetricWrapperBase] = {}
        self._lock = threading.Lock()
        for spec in SPECS.values():
            if spec.group in set(groups):
                self._register(spec)

    @classmethod
    def for_service(cls, service: str) -> Metrics:
        """The metrics of ``service`` ("gateway", "llm" or "vision"), all registered at zero."""
        return cls(SERVICE_GROUPS[service])

    def _register(self, spec: MetricSpec) -> MetricWrapperBase:
        collector: MetricWrapperBase
        if spec.kind == "histogram":
            collector = Histogram(
                spec.name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets
            )
        else:
            collector = _KINDS[spec.kind](spec.name, spec.help, spec.labels, registry=self.registry)
        self._collectors[spec.key] = collector
        return collector

    def _series(self, key: str, labels: Mapping[str, object]) -> MetricWrapperBase:
        collector = self._collectors.get(key)
        if collector is None:
            with self._lock:
                collector = self._collectors.get(key) or self._register(SPECS[key])
        if labels:
            return collector.labels(**{k: str(v) for k, v in labels.items()})
        return collector

    def inc(self, key: str, amount: float = 1.0, /, **labels: object) -> None:
        """Add ``amount`` to a counter (or a gauge)."""
        self._series(key, labels).inc(amount)  # type: ignore[attr-defined]

    def set(self, key: str, value: float, /, **labels: object) -> None:
        """Set a gauge."""
        self._series(key, labels).set(value)  # type: ignore[attr-defined]

    def watch(self, key: str, read: Callable[[], float], /, **labels: object) -> None:
        """Let a gauge read its value from ``read`` at every scrape."""
        self._series(key, labels).set_function(read)  # type: ignore[attr-defined]

    def observe(self, key: str, value: float, /, **labels: object) -> None:
        """Add an observation (seconds) to a histogram."""
        self._series(key, labels).observe(value)  # type: ignore[attr-defined]

    def get(self, key: str, /, **labels: object) -> float:
        """A counter's or gauge's value (summed over the series that match ``labels``); a
        histogram's observation count. 0 for a metric never written."""
        spec = SPECS[key]
        sample = f"{spec.name}_count" if spec.kind == "histogram" else spec.exported
        return self._sum(sample, {k: str(v) for k, v in labels.items()})

    def _sum(self, sample: str, labels: Mapping[str, str]) -> float:
        total = 0.0
        for family in self.registry.collect():
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def snapshot(self) -> dict[str, float]:
        """Every registered metric by key (summed over labels); histograms as ``<key>_count``
        and ``<key>_sum``."""
        with self._lock:
            specs = [SPECS[key] for key in self._collectors]
        out: dict[str, float] = {}
        for spec in specs:
            if spec.kind == "histogram":
                out[f"{spec.key}_count"] = self._sum(f"{spec.name}_count", {})
                out[f"{spec.key}_sum"] = self._sum(f"{spec.name}_sum", {})
            else:
                out[spec.key] = self._sum(spec.exported, {})
        return out

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape body and its content type, in the format ``accept`` (an HTTP Accept header)
        prefers: Prometheus text, or OpenMetrics."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
