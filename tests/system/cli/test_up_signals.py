"""``tandem up`` with the shipped default model leaves nothing behind, however it is stopped:
Ctrl-C (SIGINT to its process group) within a few seconds, Ctrl-C while its output goes through
``tee`` (which dies first, so every later write meets a closed pipe), and ``kill -9``."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT
from tests.support.up_process import alive, tandem_argv, tandem_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="process groups and parent-death signals"),
]

READY = "Press Ctrl-C to stop."
STOPPED_WITHIN = 8.0  # seconds; about 1.5 on an idle machine


def _up_command(log_dir: Path) -> list[str]:
    return tandem_argv(
        "up", "--grpc-port", "0", "--http-port", "0", "--device", "cpu", "--log-dir", str(log_dir)
    )


class Group:
    """A command started in its own session (so that a signal to its group is a terminal's Ctrl-C),
    and every process below it."""

    def __init__(self, argv: list[str], output: Path):
        with open(output, "wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=tandem_env(), cwd=ROOT, start_new_session=True
            )
        self.output = output
        self.family: list[psutil.Process] = []

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("tandem up did not get ready; output:\n" + self.text())
            time.sleep(0.2)
        self.family = psutil.Process(self.process.pid).children(recursive=True)

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def names(self) -> list[str]:
        return [" ".join(p.cmdline()) for p in self.family]

    def alive(self) -> list[psutil.Process]:
        return [p for p in self.family if alive(p)]

    def wait_all_gone(self, timeout: float) -> float:
        """Seconds until no process of the family is left; fails after ``timeout``."""
        started = time.monotonic()
        while self.alive():
            if time.monotonic() - started > timeout:
                left = [" ".join(p.cmdline()) for p in self.alive()]
                raise AssertionError(f"still running after {timeout} s: {left}\noutput:\n{self.text()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def cleanup(self) -> None:
        """Kill whatever is left (the children have process groups of their own)."""
        if self.process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.family += psutil.Process(self.process.pid).children(recursive=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for process in self.alive():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    groups: list[Group] = []

    def started(argv: list[str]) -> Group:
        group = Group(argv, tmp_path / f"output-{len(groups)}.txt")
        groups.append(group)
        return group

    try:
        yield started
    finally:
        for group in groups:
            group.cleanup()


def test_ctrl_c_stops_every_child_within_seconds(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    up = start(_up_command(tmp_path / "logs"))
    up.wait_ready()
    names = " ".join(up.names())
    for expected in ("redis-server", "llm_service", "vision_service", "-m gateway"):
        assert expected in names, names
    os.killpg(up.process.pid, signal.SIGINT)
    took = up.wait_all_gone(STOPPED_WITHIN)
    assert up.process.wait(timeout=STOPPED_WITHIN) == 0
    text = up.text()
    assert "Tandem stopped." in text and "killed" not in text, text
    assert took < STOPPED_WITHIN


def test_ctrl_c_with_output_through_tee_leaves_no_redis(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "tee.log"
    pipeline = f"{shlex.join(_up_command(tmp_path / 'logs'))} 2>&1 | tee {shlex.quote(str(log))}"
    shell = start(["bash", "-c", pipeline])
    deadline = time.monotonic() + 240
    while READY not in (log.read_text() if log.exists() else ""):
        assert shell.process.poll() is None and time.monotonic() < deadline, shell.text()
        time.sleep(0.2)
    shell.family = psutil.Process(shell.process.pid).children(recursive=True)
    assert any("redis-server" in name for name in shell.names()), shell.names()
    assert any(name.startswith("tee ") for name in shell.names()), shell.names()
    os.killpg(shell.process.pid, signal.SIGINT)  # the terminal's Ctrl-C: tandem up and tee alike
    shell.wait_all_gone(STOPPED_WITHIN)
    shell.process.wait(timeout=STOPPED_WITHIN)


def test_kill_9_of_tandem_up_takes_every_child_with_it(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    up = start(_up_command(tmp_path / "logs"))
    up.wait_ready()
    up.process.kill()  # SIGKILL to tandem up alone: no handler, no shutdown code runs
    up.process.wait()
    up.wait_all_gone(STOPPED_WITHIN)  # the children's parent-death signal, redis-server's too
