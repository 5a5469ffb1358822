"""deploy/grafana/tandem-dashboard.json queries only metrics Tandem exports, with their types'
suffixes, and shows the figures operators look for first."""

from __future__ import annotations

import json
import re
from typing import Any

from tandem.metrics.catalog import SPECS
from tests.support import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "tandem-dashboard.json"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def _panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def _queries() -> list[str]:
    return [t["expr"] for p in _panels() for t in p["targets"]]


def test_every_query_names_an_exported_sample() -> None:
    by_sample = {spec.name + suffix: spec for spec in SPECS.values() for suffix in SUFFIXES[spec.kind]}
    names = {name for query in _queries() for name in re.findall(r"\btandem_\w+", query)}
    assert names and names <= set(by_sample), sorted(names - set(by_sample))


def test_the_headline_figures_are_there() -> None:
    queries = "\n".join(_queries())
    for name in (
        "tandem_time_to_first_token_seconds",
        "tandem_time_per_output_token_seconds",
        "tandem_e2e_request_latency_seconds",
    ):
        assert f"histogram_quantile(0.99, sum by (le) (rate({name}_bucket" in queries, name
    for needed in (
        "sum(tandem_num_requests_running",
        "sum(tandem_num_requests_waiting",
        "rate(tandem_prompt_tokens_total",
        "rate(tandem_generation_tokens_total",
        "rate(tandem_cached_prompt_tokens_total",
        "by (grpc_service, grpc_method, grpc_code) (rate(tandem_grpc_server_handled_total",
    ):
        assert needed in queries, needed
    ratio = next(q for q in _queries() if q.count("tandem_vision_cache_hits_total") == 2)
    assert "tandem_vision_cache_misses_total" in ratio and "$vision_job" in ratio


def test_panels_fit_the_grid_and_targets_are_distinct() -> None:
    panels = _panels()
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and panel["description"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
