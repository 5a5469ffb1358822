"""``python -m vision_service`` as a real process: health, Encode, SIGTERM, clean exit."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vlm.v1 import vision_pb2, vision_pb2_grpc

from tandem.testing.checkpoints import make_test_image
from tests.support import ROOT


def wait_for_port(port_file: Path, process: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"vision service exited early with {process.returncode}")
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        time.sleep(0.05)
    raise AssertionError("no port file")


def wait_serving(channel: grpc.Channel, timeout: float) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = health.Check(health_pb2.HealthCheckRequest(service="vlm.v1.VisionService"), timeout=2).status
        if status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.1)
    raise AssertionError(f"health stayed {status}")


def test_runs_as_a_process_and_stops_cleanly_on_sigterm(checkpoint, redis_server, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    args = [sys.executable, "-m", "vision_service", "--model", str(checkpoint("llava")), "--port", "0"]
    args += ["--port-file", str(port_file), "--redis-url", redis_server.url, "--cache-prefix", "proc"]
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'protos'}"}
    log_file = (tmp_path / "stderr").open("wb")
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        port = wait_for_port(port_file, process, timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_serving(channel, timeout=60)
            buf = io.BytesIO()
            make_test_image(41).save(buf, "PNG")
            stub = vision_pb2_grpc.VisionServiceStub(channel)
            reply = stub.Encode(vision_pb2.EncodeRequest(images=[vision_pb2.ImageInput(data=buf.getvalue())]))
            assert reply.images[0].ref.num_tokens == 16 and not reply.images[0].ref.inline_record
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        log = (tmp_path / "stderr").read_text()
        assert "serving vlm.v1.VisionService" in log and "Traceback" not in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log_file.close()
