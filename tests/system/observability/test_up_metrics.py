"""``tandem up`` prints one ``metrics <service> <url>`` line per service, every URL answers a
scrape, and ``--log-format json`` reaches the services' logs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow
METRICS = re.compile(r"^metrics (\w+) (http://\S+/metrics)$")


def test_up_prints_a_metrics_url_per_service_and_logs_json(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    argv = ["--model", str(checkpoint("llava")), "--grpc-port", "0", "--http-port", "0", "--device", "cpu"]
    argv += ["--log-dir", str(tmp_path), "--log-format", "json"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'protos'}", "TOKENIZERS_PARALLELISM": "false"}
    up = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", "up", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    urls: dict[str, str] = {}
    seen: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            seen.append(line.rstrip("\n"))
            if match := METRICS.match(seen[-1]):
                urls[match.group(1)] = match.group(2)
            if seen[-1].startswith("Tandem is ready") or up.poll() is not None:
                break
        assert sorted(urls) == ["gateway", "llm", "vision"], "\n".join(seen)
        assert len(set(urls.values())) == 3
        for service, url in urls.items():
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read().decode()
            assert "# TYPE tandem_grpc_server_handled" in body, service
        lines = (tmp_path / "llm.log").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert records and all(
            {"time", "level", "logger", "request_id", "message"} <= set(r) for r in records
        )
    finally:
        family = psutil.Process(up.pid).children(recursive=True)
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        for child in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
