"""``tandem bench overhead`` (B10) on the tiny text-only llama checkpoint: the command starts
``tandem up`` itself, runs the three arms interleaved and stops every process it started; a
start that fails ends the command with status 1. Counts and fields, no timings."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.up_process import alive, tandem_argv, tandem_env

pytestmark = pytest.mark.slow

ARMS = ("in-process", "grpc", "http", "floor")
TANDEM_ARMS = ARMS[:3]  # the floor is two bare gRPC hops: one response, no tokens


def overhead(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tandem_argv("bench", "overhead", "--no-progress", *argv),
        capture_output=True,
        text=True,
        env=tandem_env(),
        timeout=600,
        check=False,
    )


def started_pids(stderr: str, log_dir: Path) -> list[int]:
    """``tandem up`` (the command's stderr) and the services it started (``tandem up``'s log)."""
    text = stderr + (log_dir / "up.log").read_text()
    return [int(pid) for pid in re.findall(r"starting\.\.\. \(pid (\d+)", text)]


def test_three_arms_interleaved_and_the_system_stopped(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, logs = checkpoint("llama"), tmp_path / "up-logs"
    run = ["--checkpoint", str(model), "--num-samples", "5", "--num-warmups", "1", "--output-len", "3"]
    done = overhead(
        *run, "--log-dir", str(logs), "--result-dir", str(tmp_path), "--result-filename", "b10.json"
    )
    assert done.returncode == 0, done.stderr
    assert (
        f"result: {tmp_path / 'b10.json'}" in done.stderr
        and "Tandem stopped." in (logs / "up.log").read_text()
    )
    doc: dict[str, Any] = json.loads((tmp_path / "b10.json").read_text())

    assert doc["benchmark"] == "overhead" and doc["command_line"].startswith("tandem bench overhead")
    assert doc["config"]["samples"] == 5 and doc["config"]["output_len"] == 3
    assert doc["machine"]["versions"]["grpcio"] and doc["machine"]["cpus_usable"] >= 1
    server = doc["server"]
    assert server["started_by_benchmark"] is True and server["model"] == model.name
    assert server["fingerprints"]["in-process"] == server["fingerprints"]["system"]

    samples = doc["samples"]
    assert [s["arm"] for s in samples] == list(ARMS) * 5  # A B C D A B C D ...
    assert [s["round"] for s in samples] == [r for r in range(5) for _ in ARMS]
    assert all(s["error"] == "" and 0 < s["ttft"] <= s["latency"] for s in samples)
    ours = [s for s in samples if s["arm"] in TANDEM_ARMS]
    assert all(s["output_tokens"] == 3 for s in ours)  # ignore_eos
    assert len({s["prompt_tokens"] for s in ours}) == 1  # the same prompt on every path
    # the floor computes as long as the in-process sample of its round, so it takes longer
    by_round = {(s["arm"], s["round"]): s["latency"] for s in samples}
    assert all(by_round["floor", r] >= by_round["in-process", r] for r in range(5))

    metrics = doc["metrics"]
    for arm in ARMS:
        stats = metrics["arms"][arm]
        assert (stats["completed"], stats["failed"]) == (5, 0)
        assert stats["latency"]["count"] == 5 and stats["latency"]["p99"] is None
        assert stats["tpot"]["count"] == (5 if arm in TANDEM_ARMS else 0)
    assert set(metrics["added"]) == {"grpc", "http", "floor"}
    base = metrics["arms"]["in-process"]["latency"]["p50"]
    for arm in ("grpc", "http"):
        extra = metrics["added"][arm]
        assert extra["p50"] == pytest.approx(metrics["arms"][arm]["latency"]["p50"] - base)
        assert extra["paired_p50"] is not None and extra["per_token_p50"] is not None

    table = done.stdout.splitlines()
    assert "added p50 ms" in table[0] and [line.split()[0] for line in table[2:6]] == list(ARMS)
    assert table[6].startswith("the floor (two bare gRPC hops around the same compute) adds")
    assert [line.split(":")[0].strip() for line in table[7:9]] == ["grpc", "http"]

    pids = started_pids(done.stderr, logs)
    assert len(pids) >= 3  # tandem up, then the language worker and the gateway
    assert not any(alive(psutil.Process(pid)) for pid in pids if psutil.pid_exists(pid))
    floor = [p for p in psutil.process_iter(["cmdline"]) if "tandem.bench.floor" in (p.info["cmdline"] or [])]
    assert not [p for p in floor if alive(p)]  # the relay and backend of arm D


def test_a_system_that_cannot_start_ends_the_command(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    done = overhead("--checkpoint", str(missing), "--log-dir", str(tmp_path), "--result-dir", str(tmp_path))
    assert done.returncode == 1
    assert "exited with code 2 during start-up" in done.stderr and str(missing) in done.stderr
    assert not list(tmp_path.glob("overhead-*.json"))
