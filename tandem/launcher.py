"""Run Tandem's services as child processes on one machine: start, watch, stop.

Lifecycle of a ``Launcher`` (what ``tandem up`` drives):

1. ``spawn(spec)`` starts one service (``python -m <service> ...``) in its own process group
   with its output in a log file; ``TANDEM_PARENT_PID`` asks the child to take SIGTERM when the
   launcher dies (``tandem.serving.parent``: set up inside the child after exec, because a
   ``preexec_fn`` is unsafe to run in a forked copy of a process that has threads).
2. ``wait_for_port(child)`` reads the port the child bound (``--port 0 --port-file``), so the
   launcher never races other programs for a port.
3. ``wait_serving(children)`` polls the standard ``grpc.health.v1`` check of each child until it
   reports SERVING, printing one line per service; a child that exits meanwhile ends the wait
   with ``ChildFailed`` (its last log lines are in the message). While any child is still
   starting, both waits print ``<name> loading... N s`` every ``progress_seconds``.
4. ``watch()`` blocks until a signal (``stop_event``) or a child's death; or, for ``tandem
   up``, a ``tandem.supervisor.Supervisor`` watches ``ServiceProcess`` wrappers and calls
   ``restart(child)`` for one that died: the same command, its port (``--port``) and the flags
   of ``ServiceSpec.restart_pins`` pinned to the values the first run bound, its log appended.
5. ``shutdown()`` sends SIGTERM one layer at a time (all children of a layer together), waits
   at most ``timeout`` per layer and kills what is left. The caller stops Redis after it.

Output goes through ``print_line``, which never raises: when the reader of a pipe is gone
(``tandem up | tee log``, where Ctrl-C stops ``tee`` too), printing stops and stopping the
children goes on.
The launcher imports neither torch nor the services: children are separate interpreters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.serving.parent import PARENT_PID_ENV


@dataclass(frozen=True)
class ServiceSpec:
    """One service to run: its display name, command line and where it reports its port."""

    name: str
    command: tuple[str, ...]
    port_file: Path | None = None
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    restart_pins: dict[str, Path] = field(default_factory=dict)  # flag -> file of its bound value

    def __post_init__(self) -> None:
        if (self.port_file is None) == (self.port is None):
            raise ValueError(f"{self.name}: give exactly one of port_file and port")


class ChildFailed(RuntimeError):
    """A child exited or never became ready; the message ends with its last log lines."""


@dataclass(eq=False)
class Child:
    """A running service process and what the launcher knows about it."""

    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    port: int | None = None
    serving: bool = False
    reported_at: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    def exited(self) -> int | None:
        return self.process.poll()

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the child's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> ChildFailed:
        tail = self.tail()
        return ChildFailed(f"{self.name} {what}; last lines of {self.log_path}:\n{tail}")


class Launcher:
    """Starts, watches and stops service processes; see the module docstring."""

    def __init__(
        self,
        log_dir: Path,
        stop_event: threading.Event | None = None,
        out: IO[str] | None = None,
        poll_seconds: float = 0.2,
        progress_seconds: float = 5.0,
    ):
        self.log_dir = log_dir
        self.stop_event = stop_event or threading.Event()
        self.out = out or sys.stdout
        self.poll_seconds = poll_seconds
        self.progress_seconds = progress_seconds
        self.children: list[Child] = []

    def say(self, message: str) -> None:
        print_line(message, self.out)

    def spawn(self, spec: ServiceSpec) -> Child:
        """Start ``spec`` with its output in ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec.name}.log"
        process = _popen(spec, log_path, "wb")
        started = time.monotonic()
        child = Child(spec, process, log_path, started, port=spec.port, reported_at=started)
        self.children.append(child)
        self.say(f"  {spec.name:<8} starting... (pid {process.pid}, log {log_path})")
        return child

    def restart(self, child: Child) -> None:
        """Start the exited ``child`` again with its bound port and pins (module docstring)."""
        command = child.spec.command
        if child.port is not None:
            command = with_option(command, "--port", str(child.port))
        for flag, path in child.spec.restart_pins.items():
            value = path.read_text().strip() if path.exists() else ""
            if value:
                command = with_option(command, flag, value)
        child.process = _popen(dataclasses.replace(child.spec, command=command), child.log_path, "ab")
        child.started_at = time.monotonic()
        child.serving = False

    def wait_for_port(self, child: Child, timeout: float) -> int:
        """The port ``child`` bound, read from its port file."""
        port_file = child.spec.port_file
        deadline = time.monotonic() + timeout
        while child.port is None and port_file is not None:
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text.isdigit():
                child.port = int(text)
                break
            self._check_alive(child, deadline, "did not bind a port")
        if child.port is None:
            raise ValueError(f"{child.name} has neither a port nor a port file")
        return child.port

    def wait_serving(self, children: Sequence[Child], timeout: float) -> None:
        """Poll each child's health until all report SERVING (prints one line per child)."""
        deadline = time.monotonic() + timeout
        channels = {
            c.name: grpc.insecure_channel(f"127.0.0.1:{self.wait_for_port(c, timeout)}") for c in children
        }
        try:
            while not all(c.serving for c in children):
                for child in children:
                    if not child.serving and _is_serving(channels[child.name]):
                        child.serving = True
                        elapsed = time.monotonic() - child.started_at
                        self.say(f"  {child.name:<8} SERVING in {elapsed:.1f} s (port {child.port})")
                pending = [c for c in children if not c.serving]
                for child in pending:
                    self._check_alive(child, deadline, "did not report SERVING", sleep=False)
                if pending:
                    self._pause(deadline)
        finally:
            for channel in channels.values():
                channel.close()

    def _check_alive(self, child: Child, deadline: float, what: str, sleep: bool = True) -> None:
        if self.stop_event.is_set():
            raise KeyboardInterrupt
        code = child.exited()
        if code is not None:
            raise child.failure(f"exited with code {code} during start-up")
        if time.monotonic() > deadline:
            raise child.failure(f"{what} in time")
        if sleep:
            self._pause(deadline)

    def _pause(self, deadline: float) -> None:
        self._report_progress()
        self.stop_event.wait(max(0.0, min(self.poll_seconds, deadline - time.monotonic())))

    def _report_progress(self) -> None:
        """``<name> loading... N s`` for each child still starting, every ``progress_seconds``."""
        now = time.monotonic()
        for child in self.children:
            if child.serving or child.exited() is not None:
                continue
            if now - child.reported_at >= self.progress_seconds:
                child.reported_at = now
                self.say(f"  {child.name:<8} loading... {now - child.started_at:.0f} s")

    def watch(self) -> Child | None:
        """Block until ``stop_event`` is set (returns None) or a child exits (returns it)."""
        while not self.stop_event.is_set():
            for child in self.children:
                if child.exited() is not None:
                    return child
            self.stop_event.wait(self.poll_seconds)
        return None

    def shutdown(self, layers: Sequence[Sequence[str]], timeout: float) -> None:
        """SIGTERM the children layer by layer (names; unnamed children last), each layer's
        together; SIGKILL what is left of a layer after ``timeout`` seconds."""
        named = {c.name: c for c in self.children}
        ordered = [[named[n] for n in layer if n in named] for layer in layers]
        listed = {id(c) for layer in ordered for c in layer}
        rest = [c for c in self.children if id(c) not in listed]
        for layer in [*ordered, rest]:
            _stop_together(layer, timeout, self.say)


@dataclass(eq=False)
class ServiceProcess:
    """A launcher child as ``tandem.supervisor.Supervised``."""

    launcher: Launcher
    child: Child

    @property
    def name(self) -> str:
        return self.child.name

    def exit_code(self) -> int | None:
        return self.child.exited()

    def restart(self) -> None:
        self.launcher.restart(self.child)

    def describe(self) -> str:
        return f"pid {self.child.process.pid}"

    def tail(self) -> str:
        return self.child.tail()


def with_option(command: tuple[str, ...], flag: str, value: str) -> tuple[str, ...]:
    """``command`` with ``flag``'s value set to ``value`` (added when absent)."""
    if flag in command[:-1]:
        at = command.index(flag)
        return (*command[: at + 1], value, *command[at + 2 :])
    return (*command, flag, value)


def _popen(spec: ServiceSpec, log_path: Path, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_PID_ENV: str(os.getpid()), **spec.env}
    with open(log_path, mode) as log:
        return subprocess.Popen(
            list(spec.command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,  # Ctrl-C reaches the launcher only; it stops children in order
        )


def _is_serving(channel: grpc.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _stop_together(children: Sequence[Child], timeout: float, say: Callable[[str], None]) -> None:
    running = [c for c in children if c.exited() is None]
    for child in running:
        say(f"  {child.name:<8} stopping (SIGTERM)...")
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in running:
        try:
            code = child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            say(f"  {child.name:<8} stopped (exit {code})")
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
            say(f"  {child.name:<8} killed after {timeout:.0f} s")


def print_line(message: str, out: IO[str]) -> None:
    """Print one line to ``out`` now; once its reader is gone, print nothing more (never raise)."""
    try:
        print(message, file=out, flush=True)
    except BrokenPipeError:
        _mute(out)
    except (OSError, ValueError):  # a closed or failing stream: the message is only lost
        pass


def _mute(out: IO[str]) -> None:
    """Point ``out``'s file at /dev/null, so that its pending text and later writes (the
    interpreter's last flush included) go nowhere instead of raising ``BrokenPipeError``."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
