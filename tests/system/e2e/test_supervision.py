"""``tandem up`` survives ``kill -9`` of any of its processes (issue 11, finding 4).

With the shipped default model: a session gets a committed turn with an image; then the state
Redis, the language worker and the gateway are each killed with SIGKILL. ``tandem up`` says so
and restarts each on its port (``<name> exited (code -9); restarting in 1 s``), keeps running,
and the session comes back with every committed turn and takes new ones. Every wait is bounded;
every process is killed at the end, whatever happened.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from tests.support import ROOT
from tests.support.up_process import READY, Up, running_up

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="process groups and parent-death signals"),
]

T = TypeVar("T")
PID = re.compile(r"^\s+(\w+)\s+(?:starting\.\.\. \(pid|SERVING at \S+ \(.*pid|restarted \(pid) (\d+)")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """``tandem up`` with the default model, its state kept in ``tmp_path``."""
    argv = [
        "--device", "cpu", "--grpc-port", "0", "--http-port", "-1",
        "--data-dir", str(tmp_path / "data"), "--log-dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    with running_up(argv, grace=30) as running:
        yield running


def _pids(up: Up) -> dict[str, int]:
    """The pid of each process as the output last named it."""
    found: dict[str, int] = {}
    for line in up.seen:
        if match := PID.search(line):
            found[match.group(1)] = int(match.group(2))
    return found


def _eventually(what: str, call: Callable[[], T], within: float) -> T:
    """``call()``'s result once it stops raising gRPC errors; fails after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {within} s: {exc}") from exc
            time.sleep(0.5)


class Client:
    def __init__(self, address: str):
        self.stub = gateway_pb2_grpc.GatewayServiceStub(grpc.insecure_channel(address))

    def history(self, session_id: str) -> int:
        request = gateway_pb2.GetSessionRequest(session_id=session_id)
        return len(self.stub.GetSession(request, timeout=5).session.messages)

    def turn(self, session_id: str, *parts: gateway_pb2.Part) -> None:
        request = gateway_pb2.ChatRequest(
            session_id=session_id,
            parts=[*parts, gateway_pb2.Part(text="and?")],
            sampling=common_pb2.SamplingParams(max_new_tokens=3),
        )
        responses = list(self.stub.Chat(request, timeout=60))
        assert responses[-1].finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED


def _kill(up: Up, name: str) -> None:
    os.kill(_pids(up)[name], signal.SIGKILL)
    up.wait_for(rf"^\s+{name}\s+exited \(code -9\); restarting in 1 s", timeout=15)
    up.wait_for(rf"^\s+{name}\s+restarted \(pid \d+", timeout=30)


def test_kill_9_of_redis_llm_and_gateway_keeps_committed_turns(up: Up) -> None:
    ready = up.wait_for(READY, timeout=240)
    client = Client(f"{ready.group(1)}:{ready.group(2)}")
    session_id = client.stub.CreateSession(gateway_pb2.CreateSessionRequest(), timeout=10).session.session_id
    image = gateway_pb2.Part(
        image=gateway_pb2.ImageSource(data=(ROOT / "examples" / "shapes.png").read_bytes())
    )
    client.turn(session_id, image)
    assert client.history(session_id) == 2

    _kill(up, "redis")  # the state Redis: its append-only file brings the turn back
    assert _eventually("session after Redis", lambda: client.history(session_id), within=30) == 2
    _eventually("a turn after Redis", lambda: client.turn(session_id), within=30)

    _kill(up, "llm")
    _eventually("a turn after llm", lambda: client.turn(session_id), within=120)
    assert client.history(session_id) == 6

    _kill(up, "gateway")
    assert _eventually("session after gateway", lambda: client.history(session_id), within=60) == 6
    _eventually("a turn after gateway", lambda: client.turn(session_id), within=60)
    assert client.history(session_id) == 8
    assert up.process.poll() is None, "tandem up stopped"
