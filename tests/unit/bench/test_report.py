"""The JSON document of a run, its table, and the comparison of two runs."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from tandem.bench import report
from tandem.bench.dataset import DatasetConfig
from tandem.bench.metrics import RequestRecord, Slo, compute_metrics
from tandem.bench.runner import ServeConfig


def make_doc(ttft: float = 0.1, turns: int = 1) -> dict:  # type: ignore[type-arg]
    config = ServeConfig(
        base_url="http://x/v1", dataset=DatasetConfig(turns=turns), api_key="secret", request_rate=math.inf,
        slo=Slo(ttft=500),
    )  # fmt: skip
    records = [
        RequestRecord(0, turn, success=True, ttft=ttft, latency=1.0, output_tokens=4, text="hidden")
        for turn in range(turns)
    ]
    metrics = compute_metrics(records, 2.0, config.slo)
    return report.document("serve", config, {"base_url": "http://x/v1", "model": "m"}, metrics, records)


def test_document_is_strict_json_without_secrets_or_text(tmp_path: Path) -> None:
    doc = make_doc()
    path = report.write(doc, tmp_path / "results")
    raw = path.read_text()
    loaded = json.loads(raw)
    assert path.name.startswith("serve-random-") and path.suffix == ".json"
    assert set(loaded) == {
        "benchmark",
        "measured_at",
        "command_line",
        "config",
        "machine",
        "server",
        "metrics",
        "requests",
    }
    assert "secret" not in raw and "hidden" not in raw and "api_key" not in raw
    assert loaded["config"]["request_rate"] == "inf"
    assert loaded["config"]["slo"] == {"ttft": 500, "tpot": None, "e2el": None}
    assert loaded["machine"]["versions"]["transformers"]
    assert loaded["metrics"]["completed"] == 1 and loaded["metrics"]["goodput"] == 0.5
    assert loaded["requests"][0]["output_tokens"] == 4
    assert report.write(doc, tmp_path, "named.json") == tmp_path / "named.json"


def test_run_table_lists_metrics_and_turns() -> None:
    out = io.StringIO()
    report.print_run(json.loads(json.dumps(make_doc(turns=2))), out)
    text = out.getvalue()
    assert "TTFT median" in text and "goodput" in text and "TTFT median, turn 2" in text


def test_comparison_shows_the_ratio() -> None:
    a, b = (json.loads(json.dumps(make_doc(ttft=t))) for t in (0.1, 0.2))
    out = io.StringIO()
    report.print_comparison(a, b, out)
    row = next(line for line in out.getvalue().splitlines() if line.startswith("TTFT mean"))
    assert row.split()[2:5] == ["100", "200", "2.000"]


def test_lookup() -> None:
    assert report.lookup({"ttft": {"median": 3}}, "ttft.median") == 3.0
    assert report.lookup({"goodput": None}, "goodput") is None
    assert report.lookup({}, "ttft.p99") is None
