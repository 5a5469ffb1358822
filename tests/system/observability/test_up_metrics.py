"""``tandem up`` prints one ``metrics <service> <url>`` line per service, every URL answers a
scrape, and ``--log-format json`` reaches the services' logs."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.support.up_process import READY, running_up

pytestmark = pytest.mark.slow
METRICS = re.compile(r"^metrics (\w+) (http://\S+/metrics)$")


def test_up_prints_a_metrics_url_per_service_and_logs_json(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    argv = ["--model", str(checkpoint("llava")), "--grpc-port", "0", "--http-port", "0", "--device", "cpu"]
    argv += ["--log-dir", str(tmp_path), "--log-format", "json"]
    with running_up(argv) as up:
        up.wait_for(READY, timeout=240)
        urls = {m.group(1): m.group(2) for line in up.seen if (m := METRICS.match(line))}
        assert sorted(urls) == ["gateway", "llm", "vision"], "\n".join(up.seen)
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
