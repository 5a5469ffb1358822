"""``tandem`` as a real subprocess, for the system tests that run the whole system with ``tandem up``.

``Up`` starts ``tandem up``, collects its output lines on a reader thread and waits for a line;
``running_up`` always stops it and every process below it, whatever the test did. ``tandem_env``,
``tandem_argv``, ``descendants`` and ``alive`` serve tests that drive the processes themselves.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psutil

from tests.support import ROOT

READY = re.compile(r"^Tandem is ready: gRPC gateway at ([\d.]+):(\d+)")
"""The line ``tandem up`` prints once every service is SERVING; groups 1 and 2: the gateway."""


def tandem_env() -> dict[str, str]:
    """The environment of a ``tandem`` child: this checkout and its generated code importable,
    and no ``TANDEM_MODEL`` from the caller's shell (the model is what the test asks for)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'protos'}", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TANDEM_MODEL", None)
    return env


def tandem_argv(*argv: str) -> list[str]:
    """The command line of ``tandem <argv>`` on this interpreter."""
    return [sys.executable, "-m", "tandem.cli", *argv]


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` (none once it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(process: psutil.Process) -> bool:
    """True while ``process`` runs (a zombie does not)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Up:
    """A running ``tandem up <argv>`` whose output lines are collected by a reader thread.

    ``wait_for`` consumes lines until one matches; every line read so far is in ``seen``.
    """

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            tandem_argv("up", *argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or tandem_env(),
            cwd=ROOT,
        )
        self.family = descendants(self.process.pid)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """The match of the first line from here on that matches ``pattern``; fails with the
        output after ``timeout`` seconds, or once ``tandem up`` has exited and said all."""
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if match := compiled.search(line):
                return match
        raise AssertionError(f"no line matching {compiled.pattern!r}; output:\n" + "\n".join(self.seen))

    def drain(self) -> str:
        """All the output so far (to its end once ``tandem up`` has exited)."""
        if self.process.poll() is not None:
            self.reader.join(timeout=10)  # the pipe is closed: read to its end
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "\n".join(self.seen)

    def stop(self, grace: float = 60.0) -> None:
        """SIGTERM, SIGKILL after ``grace`` seconds, then kill every process of its family still
        running (also those it started and then lost track of)."""
        family = self.family + descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for process in family:
            if alive(process):
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()


@contextlib.contextmanager
def running_up(argv: list[str], env: dict[str, str] | None = None, grace: float = 60.0) -> Iterator[Up]:
    """``tandem up <argv>`` for the block; stopped at its end (``Up.stop``), even after a failure."""
    up = Up(argv, env)
    try:
        yield up
    finally:
        up.stop(grace)
