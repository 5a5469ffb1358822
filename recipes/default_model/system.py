"""Start a whole Tandem (``tandem up``: Redis, vision, language, gateway) for an evaluation run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

READY = re.compile(r"Tandem is ready: gRPC gateway at (\S+)")


@contextmanager
def running_tandem(model: Path, timeout: float = 600.0, log_dir: Path | None = None) -> Iterator[str]:
    """Run ``tandem up --model MODEL`` on free ports; yield the gateway's gRPC address; stop it.

    Its output is echoed to stderr prefixed with ``[tandem up]``; if it exits or is not ready within
    ``timeout`` seconds, ``RuntimeError`` says so with the last lines it printed.
    """
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="tandem-eval-"))
    command = [sys.executable, "-m", "tandem.cli", "up", "--model", str(model), "--grpc-port", "0"]
    command += ["--http-port", "-1", "--log-dir", str(log_dir)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    lines: list[str] = []
    address: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            print(f"[tandem up] {line.rstrip()}", file=sys.stderr, flush=True)
            match = READY.search(line)
            if match:
                address.append(match.group(1))
                ready.set()
        ready.set()  # it exited

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        ready.wait(timeout)  # set on the ready line, or when the output ends (it exited)
        if not address:
            tail = "\n".join(lines[-15:])
            raise RuntimeError(f"`tandem up` did not become ready (exit code {process.poll()}):\n{tail}")
        yield address[0]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(5)
