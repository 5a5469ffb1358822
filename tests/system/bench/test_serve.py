"""``tandem bench serve`` against a real ``tandem up`` on a benchmark checkpoint at a test size
(LLaVA-1.5 hub layout, 1 layer, vocab 1024), history re-sent and with sessions; ``tandem bench hf``
on the same checkpoint, and ``tandem bench compare`` of the two; the server's stage figures from
the metrics URLs ``tandem up`` prints. Counts and fields, no timings."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tandem.bench.checkpoints import build
from tests.support.up_process import READY, running_up, tandem_argv, tandem_env

pytestmark = pytest.mark.slow

WORKLOAD = ["--dataset", "random-mm", "--num-prompts", "3", "--turns", "2", "--mm-reuse", "0.5"]
WORKLOAD += ["--output-len", "4", "--ignore-eos", "--num-warmups", "1", "--no-progress"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("llava-1.5-smol", tmp_path_factory.mktemp("bench") / "llava-smol", layers=1, vocab_size=1024)


@dataclass(frozen=True)
class Served:
    base_url: str
    metrics_urls: dict[str, str]  # service -> its /metrics, from the `metrics <service> <url>` lines


@pytest.fixture(scope="module")
def served(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    logs = tmp_path_factory.mktemp("bench-up-logs")
    argv = ["--model", str(model), "--grpc-port", "0", "--http-port", "0", "--device", "cpu"]
    with running_up([*argv, "--log-dir", str(logs)]) as up:
        up.wait_for(READY, timeout=300)
        base_url = up.wait_for(r"HTTP\s+(http://\S+/v1)", timeout=10).group(1)
        metrics = dict(re.findall(r"^metrics (\w+) (http://\S+)$", "\n".join(up.seen), re.MULTILINE))
        yield Served(base_url, metrics)


def tandem(*argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        tandem_argv(*argv), capture_output=True, text=True, env=tandem_env(), timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def serve(base_url: str, results: Path, name: str, *extra: str) -> dict[str, Any]:
    argv = ["bench", "serve", "--base-url", base_url, *WORKLOAD, "--max-concurrency", "2", *extra]
    done = tandem(*argv, "--goodput", "ttft:600000", "--result-dir", str(results), "--result-filename", name)
    assert "TTFT median, turn 2" in done.stdout and f"result: {results / name}" in done.stderr
    assert ("server stages (mean ms per request" in done.stdout) == ("--metrics-url" in extra)
    return json.loads((results / name).read_text())


def check_counts(doc: dict[str, Any]) -> None:
    metrics, requests = doc["metrics"], doc["requests"]
    assert (metrics["completed"], metrics["failed"], len(requests)) == (6, 0, 6)
    assert metrics["goodput"] == pytest.approx(metrics["request_throughput"])
    assert len(metrics["ttft_by_turn"]) == 2 and all(t["count"] == 3 for t in metrics["ttft_by_turn"])
    assert sorted((r["conversation"], r["turn"]) for r in requests) == [
        (c, t) for c in range(3) for t in range(2)
    ]
    assert all(1 <= r["output_tokens"] <= 4 and r["success"] for r in requests)
    assert all(r["prompt_tokens"] > 196 for r in requests)  # the image's 196 tokens and the text
    assert metrics["total_output_tokens"] == sum(r["output_tokens"] for r in requests)
    assert doc["config"]["dataset"]["reuse"] == 0.5 and doc["config"]["ignore_eos"] is True
    assert doc["machine"]["versions"]["torch"] and doc["command_line"].startswith("tandem bench serve")


def check_stages(doc: dict[str, Any], metrics_urls: dict[str, str]) -> None:
    """The stages of the 6 measured requests (3 first turns with an image each, 3 second turns)."""
    stages = doc["server_stages"]
    assert stages["requests"] == 6 and sorted(stages["scrapes"]) == sorted(metrics_urls.values())
    vision = stages["scrapes"][metrics_urls["vision"]]
    assert vision["tandem_vision_hash_seconds"]["count"] >= 3  # history re-sent: the image again
    assert vision["tandem_vision_encode_seconds"]["sum_s"] > 0
    llm = stages["scrapes"][metrics_urls["llm"]]
    assert llm["tandem_engine_queue_seconds"]["count"] == 6
    b4 = stages["b4"]
    assert b4["ttft_mean_ms"] == doc["metrics"]["ttft"]["mean"]
    assert all(
        b4["stages_ms"][name] > 0 for name in ("tandem_image_fetch_seconds", "tandem_engine_prefill_seconds")
    )
    assert b4["ratio"] == pytest.approx(b4["sum_ms"] / b4["ttft_mean_ms"])


def test_serve_hf_and_compare(served: Served, model: Path, tmp_path: Path) -> None:
    base_url = served.base_url
    assert sorted(served.metrics_urls) == ["gateway", "llm", "vision"]
    urls = [arg for url in served.metrics_urls.values() for arg in ("--metrics-url", url)]
    history = serve(base_url, tmp_path, "history.json", *urls)
    check_counts(history)
    check_stages(history, served.metrics_urls)
    assert history["benchmark"] == "serve" and history["server"] == {
        "base_url": base_url,
        "model": model.name,
    }
    assert history["config"]["sessions"] is False

    sessions = serve(base_url, tmp_path, "sessions.json", "--sessions")
    check_counts(sessions)
    assert "server_stages" not in sessions
    assert sessions["config"]["sessions"] is True
    for conversation in range(3):
        first, second = (
            r["prompt_tokens"]
            for r in sorted(sessions["requests"], key=lambda r: r["turn"])
            if r["conversation"] == conversation
        )
        assert second > first  # the session supplied the history

    hf = ["bench", "hf", "--checkpoint", str(model), *WORKLOAD, "--result-dir", str(tmp_path)]
    tandem(*hf, "--result-filename", "hf.json")
    baseline = json.loads((tmp_path / "hf.json").read_text())
    assert baseline["benchmark"] == "hf" and baseline["metrics"]["completed"] == 6
    assert all(r["output_tokens"] == 4 for r in baseline["requests"])  # min_new_tokens with --ignore-eos

    compared = tandem("bench", "compare", str(tmp_path / "hf.json"), str(tmp_path / "history.json"))
    assert "B / A" in compared.stdout and "TTFT median, turn 2" in compared.stdout
