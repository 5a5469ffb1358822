"""The metric catalogue: the names other tools scrape exist with their types and labels, every
service registers its own groups (and nothing global), and every name the code writes is in it."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tandem.metrics import CATALOG, Metrics
from tandem.metrics.catalog import SPECS
from tests.support import ROOT

# name (without _total) -> (type, labels, the service that exports it)
REQUIRED = {
    "tandem_time_to_first_token_seconds": ("histogram", (), "gateway"),
    "tandem_e2e_request_latency_seconds": ("histogram", (), "gateway"),
    "tandem_time_per_output_token_seconds": ("histogram", (), "llm"),
    "tandem_num_requests_running": ("gauge", (), "llm"),
    "tandem_num_requests_waiting": ("gauge", (), "llm"),
    "tandem_prompt_tokens": ("counter", (), "llm"),
    "tandem_generation_tokens": ("counter", (), "llm"),
    "tandem_cached_prompt_tokens": ("counter", (), "llm"),
    "tandem_vision_cache_hits": ("counter", (), "vision"),
    "tandem_vision_cache_misses": ("counter", (), "vision"),
    "tandem_vision_encode_seconds": ("histogram", (), "vision"),
    # the stages of a first token (B4's breakdown, `tandem bench serve --metrics-url`)
    "tandem_image_fetch_seconds": ("histogram", (), "gateway"),
    "tandem_vision_hash_seconds": ("histogram", (), "vision"),
    "tandem_vision_preprocess_seconds": ("histogram", (), "vision"),
    "tandem_vision_cache_seconds": ("histogram", (), "vision"),
    "tandem_embedding_fetch_seconds": ("histogram", (), "llm"),
    "tandem_engine_queue_seconds": ("histogram", (), "llm"),
    "tandem_engine_prefill_seconds": ("histogram", (), "llm"),
    "tandem_vision_images_encoded": ("counter", (), "vision"),
    "tandem_http_requests": ("counter", ("method", "route", "status"), "gateway"),
    "tandem_redis_errors": ("counter", ("role",), "vision"),
    "tandem_redis_breaker_open": ("gauge", ("role",), "llm"),
    "tandem_session_commits": ("counter", ("outcome",), "gateway"),
    "tandem_sessions_created": ("counter", (), "gateway"),
}
GRPC = ("grpc_service", "grpc_method", "grpc_type", "grpc_code")
WRITES = re.compile(r"metrics\.(?:inc|set|observe|watch)\(\s*\"(\w+)\"")


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_required_names_types_and_labels(name: str) -> None:
    kind, labels, service = REQUIRED[name]
    spec = SPECS[name.removeprefix("tandem_")]
    assert (spec.name, spec.kind, spec.labels) == (name, kind, labels)
    exported = {family.name: family.type for family in Metrics.for_service(service).registry.collect()}
    assert exported[name] == kind


@pytest.mark.parametrize("service", ["gateway", "llm", "vision"])
def test_every_service_counts_grpc_calls_by_method_and_code(service: str) -> None:
    metrics = Metrics.for_service(service)
    labels = dict.fromkeys(GRPC, "x")
    metrics.inc("grpc_server_handled", **labels)
    text = metrics.render()[0].decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "tandem_grpc_server_handled"]
    assert family.type == "counter"
    assert [set(s.labels) for s in family.samples if s.name.endswith("_total")] == [set(GRPC)]


def test_catalogue_names_are_prefixed_unique_and_typed() -> None:
    assert len({spec.name for spec in CATALOG}) == len(CATALOG)
    for spec in CATALOG:
        assert re.fullmatch(r"tandem_[a-z][a-z0-9_]*", spec.name) and not spec.name.endswith("_total")
        assert spec.help.endswith(".") and spec.kind in {"counter", "gauge", "histogram"}
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds") and list(spec.buckets) == sorted(spec.buckets)


def test_every_name_the_code_writes_is_in_the_catalogue() -> None:
    written = set()
    for package in ("tandem", "gateway", "llm_service", "vision_service"):
        for path in (ROOT / package).rglob("*.py"):
            written |= set(WRITES.findall(path.read_text()))
    assert written, "the pattern found nothing"
    assert written <= set(SPECS), sorted(written - set(SPECS))
    assert {"grpc_server_handled", "vision_cache_misses", "time_to_first_token_seconds"} <= written


def test_registries_are_per_instance_and_never_the_global_one() -> None:
    one, two = Metrics.for_service("vision"), Metrics.for_service("vision")
    one.inc("vision_cache_hits")
    assert (one.get("vision_cache_hits"), two.get("vision_cache_hits")) == (1, 0)
    assert REGISTRY.get_sample_value("tandem_vision_cache_hits_total") is None


def test_get_snapshot_and_lazy_groups() -> None:
    metrics = Metrics()  # nothing registered until written
    assert metrics.snapshot() == {} and metrics.get("engine_cancelled") == 0
    metrics.inc("http_requests", method="GET", route="/x", status=200)
    metrics.inc("http_requests", method="GET", route="/x", status=404)
    metrics.observe("engine_decode_seconds", 0.25)
    metrics.observe("engine_decode_seconds", 0.5)
    assert metrics.get("http_requests") == 2 and metrics.get("http_requests", status=404) == 1
    snapshot = metrics.snapshot()
    assert snapshot["engine_decode_seconds_count"] == 2 and snapshot["engine_decode_seconds_sum"] == 0.75
    assert metrics.get("engine_decode_seconds") == 2
    with pytest.raises(KeyError):
        metrics.inc("no_such_metric")
    with pytest.raises(ValueError):
        metrics.inc("http_requests")  # its labels are required


def test_a_watched_gauge_reads_at_scrape_time() -> None:
    metrics, state = Metrics.for_service("llm"), {"open": False}
    metrics.watch("redis_breaker_open", lambda: float(state["open"]), role="cache")
    assert metrics.get("redis_breaker_open", role="cache") == 0
    state["open"] = True
    assert metrics.get("redis_breaker_open", role="cache") == 1


def test_render_negotiates_openmetrics() -> None:
    metrics = Metrics.for_service("gateway")
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain") and b"tandem_time_to_first_token_seconds_bucket" in body
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
