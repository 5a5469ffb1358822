"""``tandem.bench.scrape``: histogram deltas between two canned scrapes, the means per request and
per observation, the B4 sum against TTFT, the stage table, and a clear error for a bad URL."""

from __future__ import annotations

import io
import socket

import pytest

from tandem.bench.scrape import (
    ScrapeError,
    StageProbe,
    Totals,
    b4_breakdown,
    parse_histograms,
    print_stages,
    scrape,
    stage_figures,
    stage_rows,
)

ENCODE = 'grpc_method="Encode",grpc_service="vlm.v1.VisionService",grpc_type="unary"'
BEFORE = f"""# HELP tandem_vision_encode_seconds Duration of one encoder forward (a batch).
# TYPE tandem_vision_encode_seconds histogram
tandem_vision_encode_seconds_bucket{{le="0.5"}} 1.0
tandem_vision_encode_seconds_bucket{{le="+Inf"}} 2.0
tandem_vision_encode_seconds_count 2.0
tandem_vision_encode_seconds_sum 1.5
# HELP tandem_vision_encode_seconds_created Duration of one encoder forward (a batch).
# TYPE tandem_vision_encode_seconds_created gauge
tandem_vision_encode_seconds_created 1.7e+09
# HELP tandem_vision_hash_seconds Time to hash.
# TYPE tandem_vision_hash_seconds histogram
tandem_vision_hash_seconds_bucket{{le="+Inf"}} 2.0
tandem_vision_hash_seconds_count 2.0
tandem_vision_hash_seconds_sum 0.002
# HELP tandem_grpc_server_handling_seconds Time from an RPC's start to its status.
# TYPE tandem_grpc_server_handling_seconds histogram
tandem_grpc_server_handling_seconds_bucket{{{ENCODE},le="+Inf"}} 2.0
tandem_grpc_server_handling_seconds_count{{{ENCODE}}} 2.0
tandem_grpc_server_handling_seconds_sum{{{ENCODE}}} 2.0
# HELP tandem_vision_images_encoded_total Images run through the vision encoder.
# TYPE tandem_vision_images_encoded_total counter
tandem_vision_images_encoded_total 2.0
# HELP other_seconds Not ours.
# TYPE other_seconds histogram
other_seconds_bucket{{le="+Inf"}} 1.0
other_seconds_count 1.0
other_seconds_sum 9.0
"""
CHECK = """tandem_grpc_server_handling_seconds_count{grpc_method="Check",grpc_type="unary"} 1.0
tandem_grpc_server_handling_seconds_sum{grpc_method="Check",grpc_type="unary"} 0.001"""
# After four more requests: four encodes (0.8 s), four hashes (0.004 s), four Encode calls plus a
# health check that appeared since (a new series).
AFTER = (
    BEFORE.replace("tandem_vision_encode_seconds_count 2.0", "tandem_vision_encode_seconds_count 6.0")
    .replace("tandem_vision_encode_seconds_sum 1.5", "tandem_vision_encode_seconds_sum 2.3")
    .replace("tandem_vision_hash_seconds_count 2.0", "tandem_vision_hash_seconds_count 6.0")
    .replace("tandem_vision_hash_seconds_sum 0.002", "tandem_vision_hash_seconds_sum 0.006")
    .replace(f"_count{{{ENCODE}}} 2.0", f"_count{{{ENCODE}}} 6.0")
    .replace(f"_sum{{{ENCODE}}} 2.0", f"_sum{{{ENCODE}}} 3.0\n{CHECK}")
)
ENCODE_SERIES = f"tandem_grpc_server_handling_seconds{{{ENCODE}}}"
URL = "http://vision:9090/metrics"


def test_parse_keeps_the_tandem_seconds_histograms_by_series() -> None:
    series = parse_histograms(BEFORE)
    assert series == {
        "tandem_vision_encode_seconds": Totals(2.0, 1.5),
        "tandem_vision_hash_seconds": Totals(2.0, 0.002),
        ENCODE_SERIES: Totals(2.0, 2.0),
    }


def test_deltas_and_means_per_request_and_per_observation() -> None:
    figures = {f.series: f for f in stage_figures(URL, parse_histograms(BEFORE), parse_histograms(AFTER), 4)}
    encode = figures["tandem_vision_encode_seconds"]
    assert (encode.count, encode.sum_s) == (4.0, pytest.approx(0.8))
    assert encode.ms_per_request == pytest.approx(200.0) and encode.ms_per_observation == pytest.approx(200.0)
    assert figures["tandem_vision_hash_seconds"].ms_per_request == pytest.approx(1.0)
    assert figures[ENCODE_SERIES].ms_per_request == pytest.approx(250.0)
    health = next(f for name, f in figures.items() if "Check" in name)  # new since: counted from 0
    assert (health.count, health.ms_per_observation) == (1.0, pytest.approx(1.0))
    assert health.ms_per_request == pytest.approx(0.25)


def test_no_completed_requests_and_no_observations_give_no_means() -> None:
    (figure,) = stage_figures(URL, {"a": Totals(1, 1)}, {"a": Totals(1, 1)}, 0)
    assert (figure.count, figure.ms_per_request, figure.ms_per_observation) == (0, None, None)


def test_b4_adds_its_stages_over_services_and_sets_them_against_ttft() -> None:
    vision = stage_figures(URL, parse_histograms(BEFORE), parse_histograms(AFTER), 4)
    llm = stage_figures("http://llm/metrics", {}, {"tandem_engine_prefill_seconds": Totals(4, 0.2)}, 4)
    b4 = b4_breakdown(vision + llm, ttft_mean_ms=260.0)
    assert b4["stages_ms"]["tandem_vision_encode_seconds"] == pytest.approx(200.0)
    assert b4["stages_ms"]["tandem_engine_prefill_seconds"] == pytest.approx(50.0)
    assert b4["stages_ms"]["tandem_image_fetch_seconds"] == 0.0  # not scraped
    assert b4["sum_ms"] == pytest.approx(251.0)  # the gRPC handling time is not a stage
    assert b4["ratio"] == pytest.approx(251.0 / 260.0)
    assert b4_breakdown(vision, ttft_mean_ms=None)["ratio"] is None


def test_probe_report_and_table(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = iter([BEFORE, AFTER])
    monkeypatch.setattr("tandem.bench.scrape.scrape", lambda url, timeout: parse_histograms(next(texts)))
    probe = StageProbe([URL])
    probe.start()
    probe.finish()
    section = probe.report(requests=4, ttft_mean_ms=250.0)
    assert section["requests"] == 4
    assert section["scrapes"][URL]["tandem_vision_encode_seconds"]["ms_per_request"] == pytest.approx(200.0)
    assert section["b4"]["sum_ms"] == pytest.approx(201.0)

    rows = stage_rows(section)
    names = [row[0] for row in rows]
    assert names[:2] == ["vision_hash", "vision_encode"]  # B4 stages first, in pipeline order
    assert "grpc_server_handling{Encode,vlm.v1.VisionService,unary}" in names
    assert rows[-1] == ["B4 sum / TTFT", "", "0.804", ""]
    out = io.StringIO()
    print_stages(section, out)
    assert "server stages (mean ms per request, 4 requests)" in out.getvalue()
    assert "200.00" in out.getvalue()


def test_an_unreachable_url_is_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    url = f"http://127.0.0.1:{port}/metrics"
    with pytest.raises(ScrapeError, match=f"cannot scrape the metrics URL {url}"):
        scrape(url, timeout=5)
    with pytest.raises(ScrapeError, match="not-a-url"):
        StageProbe(["not-a-url"]).check()
    with pytest.raises(ValueError, match="at least one"):
        StageProbe([])
