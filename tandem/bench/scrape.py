"""Where the server's time went: its ``/metrics`` scraped before and after a run's measured requests.

``tandem bench serve --metrics-url URL`` (once per service, as ``tandem up`` prints them) scrapes
each URL once before the run starts (an unreachable one stops it there), again after the warm-up,
and once more at the end. For every ``tandem_*_seconds`` histogram series, the run's share is the
change of its ``_sum`` and ``_count``; divided by the completed requests it is the mean time per
request a stage took, divided by the count the mean per observation.

The B4 breakdown (../shared/BENCHMARKS.md) adds the stages before a first token -- image fetch,
hash, preprocess, encode, cache, embedding fetch, engine queue, prefill -- per request, and sets
the sum against the client's mean TTFT: near 1 when the stages explain the TTFT.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from tandem.bench.report import print_table

# The histograms (exported names) that make up a request's TTFT on Tandem, in pipeline order.
B4_STAGES = (
    "tandem_image_fetch_seconds",
    "tandem_vision_hash_seconds",
    "tandem_vision_preprocess_seconds",
    "tandem_vision_encode_seconds",
    "tandem_vision_cache_seconds",
    "tandem_embedding_fetch_seconds",
    "tandem_engine_queue_seconds",
    "tandem_engine_prefill_seconds",
)


class ScrapeError(Exception):
    """A metrics URL did not answer with a Prometheus text scrape."""


@dataclass(frozen=True)
class Totals:
    """One histogram series at one scrape: its observation count and their sum (seconds)."""

    count: float = 0.0
    sum: float = 0.0


Series = dict[str, Totals]
"""Histogram series by name, labels included: ``tandem_x_seconds{grpc_method="Encode"}``."""


def series_name(name: str, labels: Mapping[str, str]) -> str:
    """``name`` with its labels (``le`` aside) sorted, as Prometheus writes a series."""
    pairs = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "le")
    return f"{name}{{{pairs}}}" if pairs else name


def parse_histograms(text: str) -> Series:
    """Every ``tandem_*_seconds`` histogram series of a scrape in the Prometheus text format."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram" or not _timed(family.name):
            continue
        for sample in family.samples:
            field = sample.name.removeprefix(family.name).lstrip("_")
            if field in ("count", "sum"):
                out.setdefault(series_name(family.name, sample.labels), {})[field] = sample.value
    return {name: Totals(v.get("count", 0.0), v.get("sum", 0.0)) for name, v in out.items()}


def _timed(name: str) -> bool:
    return name.startswith("tandem_") and name.endswith("_seconds")


def scrape(url: str, timeout: float = 10.0) -> Series:
    """GET ``url`` and parse it; ``ScrapeError`` when it cannot be read or parsed."""
    try:
        request = urllib.request.Request(url, headers={"Accept": "text/plain"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
        return parse_histograms(text)
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        raise ScrapeError(f"cannot scrape the metrics URL {url}: {exc}") from None


@dataclass(frozen=True)
class StageFigures:
    """One histogram series over a run: what its sum and count grew by, and the means."""

    url: str
    series: str
    count: float
    sum_s: float
    ms_per_request: float | None
    ms_per_observation: float | None


def stage_figures(
    url: str, before: Mapping[str, Totals], after: Mapping[str, Totals], requests: int
) -> list[StageFigures]:
    """The change of every series in ``after`` since ``before`` (a series new since then: from 0),
    with its mean per completed request (``requests``) and per observation."""
    figures = []
    for name in sorted(after):
        start = before.get(name, Totals())
        count, total = after[name].count - start.count, after[name].sum - start.sum
        per_request = total * 1000 / requests if requests else None
        per_observation = total * 1000 / count if count else None
        figures.append(StageFigures(url, name, count, total, per_request, per_observation))
    return figures


def b4_breakdown(figures: Sequence[StageFigures], ttft_mean_ms: float | None) -> dict[str, Any]:
    """The B4 stages' mean ms per request (all series of each, over every URL), their sum, the
    client's mean TTFT and the ratio sum / TTFT."""
    parts = {stage: 0.0 for stage in B4_STAGES}
    for figure in figures:
        stage = figure.series.partition("{")[0]
        if stage in parts and figure.ms_per_request is not None:
            parts[stage] += figure.ms_per_request
    total = sum(parts.values())
    ratio = total / ttft_mean_ms if ttft_mean_ms else None
    return {"stages_ms": parts, "sum_ms": total, "ttft_mean_ms": ttft_mean_ms, "ratio": ratio}


class StageProbe:
    """The scrapes of one run: ``check`` before it starts, ``start`` after its warm-up,
    ``finish`` at its end (then ``report``)."""

    def __init__(self, urls: Sequence[str], timeout: float = 10.0):
        if not urls:
            raise ValueError("give at least one metrics URL")
        self.urls = tuple(urls)
        self.timeout = timeout
        self.before: dict[str, Series] = {}
        self.after: dict[str, Series] = {}

    def _scrape_all(self) -> dict[str, Series]:
        return {url: scrape(url, self.timeout) for url in self.urls}

    def check(self) -> None:
        """Scrape every URL once (``ScrapeError`` names the first that fails)."""
        self.before = self._scrape_all()

    def start(self) -> None:
        """The scrape the run's figures start from (call it after the warm-up)."""
        self.before = self._scrape_all()

    def finish(self) -> None:
        self.after = self._scrape_all()

    def report(self, requests: int, ttft_mean_ms: float | None) -> dict[str, Any]:
        """The ``server_stages`` section of a result: ``requests`` (completed), per URL every
        series' figures, and ``b4`` (``b4_breakdown``)."""
        figures = [
            figure
            for url in self.urls
            for figure in stage_figures(url, self.before.get(url, {}), self.after.get(url, {}), requests)
        ]
        by_url: dict[str, dict[str, Any]] = {url: {} for url in self.urls}
        for f in figures:
            by_url[f.url][f.series] = {
                "count": f.count,
                "sum_s": f.sum_s,
                "ms_per_request": f.ms_per_request,
                "ms_per_observation": f.ms_per_observation,
            }
        return {"requests": requests, "scrapes": by_url, "b4": b4_breakdown(figures, ttft_mean_ms)}


def stage_rows(section: Mapping[str, Any]) -> list[list[str]]:
    """The rows of the stage table: each series that moved (the B4 stages first, in their order),
    then the B4 sum, the mean TTFT and their ratio."""
    moved = [
        (series, figures)
        for scrapes in section["scrapes"].values()
        for series, figures in scrapes.items()
        if figures["count"] > 0
    ]
    order = {stage: index for index, stage in enumerate(B4_STAGES)}
    moved.sort(key=lambda item: (order.get(item[0].partition("{")[0], len(order)), item[0]))
    rows = [
        [_short(series), _count(f["count"]), _ms(f["ms_per_request"]), _ms(f["ms_per_observation"])]
        for series, f in moved
    ]
    b4 = section["b4"]
    ratio = "-" if b4["ratio"] is None else f"{b4['ratio']:.3f}"
    rows += [
        ["B4 stages, sum", "", _ms(b4["sum_ms"]), ""],
        ["TTFT mean (client)", "", _ms(b4["ttft_mean_ms"]), ""],
        ["B4 sum / TTFT", "", ratio, ""],
    ]
    return rows


def print_stages(section: Mapping[str, Any], out: TextIO) -> None:
    """The "server stages (mean ms per request)" table of a ``server_stages`` section."""
    print(f"\nserver stages (mean ms per request, {section['requests']} requests)", file=out)
    print_table(["stage", "count", "ms/request", "ms/observation"], stage_rows(section), out)


def _short(series: str) -> str:
    """A series' name for the table: ``tandem_x_seconds{a="1",b="2"}`` -> ``x{1,2}``."""
    name, _, labels = series.partition("{")
    short = name.removeprefix("tandem_").removesuffix("_seconds")
    if not labels:
        return short
    values = [pair.partition("=")[2].strip('"') for pair in labels.rstrip("}").split('",')]
    return f"{short}{{{','.join(values)}}}"


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
