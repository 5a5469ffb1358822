"""``tandem up`` as a real subprocess: all services, embedded Redis, a request, a clean stop."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import ROOT

READY = re.compile(r"^Tandem is ready: gRPC gateway at ([\d.]+):(\d+)")

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'protos'}", "TOKENIZERS_PARALLELISM": "false"}


def _tandem(*argv: str) -> list[str]:
    return [sys.executable, "-m", "tandem.cli", *argv]


class Up:
    """A running ``tandem up`` whose output lines are collected by a reader thread."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            _tandem("up", *argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or _env(),
            cwd=ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if match := pattern.search(line):
                return match
        raise AssertionError("tandem up did not get there; output:\n" + "\n".join(self.seen))

    def drain(self) -> str:
        if self.process.poll() is not None:
            self.reader.join(timeout=10)  # the pipe is closed: read to its end
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "\n".join(self.seen)


def _check_openai_http(base_url: str, image: Path) -> None:
    """One OpenAI-format request with an image as a data URI (the gateway's HTTP endpoint)."""
    data_uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    content = [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": data_uri}}]
    with urllib.request.urlopen(f"{base_url}/models", timeout=30) as response:
        model = json.loads(response.read())["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    request = urllib.request.Request(
        f"{base_url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        reply = json.loads(response.read())
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert reply["usage"]["completion_tokens"] == 4


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def up(checkpoint, tmp_path: Path) -> Iterator[Up]:  # type: ignore[no-untyped-def]
    model = checkpoint("llava")
    argv = ["--model", str(model), "--grpc-port", "0", "--http-port", "0", "--device", "cpu"]
    running = Up([*argv, "--log-dir", str(tmp_path / "logs")])
    family = _descendants(running.process.pid)
    try:
        yield running
    finally:
        family += _descendants(running.process.pid)
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        for process in family:
            if _alive(process):
                process.kill()


def test_up_serves_a_request_and_stops_cleanly(up: Up) -> None:
    match = up.wait_for(READY, timeout=240)
    address = f"{match.group(1)}:{match.group(2)}"
    children = _descendants(up.process.pid)
    names = " ".join(" ".join(c.cmdline()) for c in children)
    for expected in ("vision_service", "llm_service", "-m gateway", "redis-server"):
        assert expected in names, names
    output = up.drain()
    for service in ("vision", "llm", "gateway"):
        assert re.search(rf"{service}\s+SERVING in [\d.]+ s", output), output

    image = ROOT / "examples" / "shapes.png"
    generate = subprocess.run(
        _tandem(
            "generate",
            "--address",
            address,
            "--image",
            str(image),
            "--max-new-tokens",
            "8",
            "--usage",
            "describe",
        ),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert generate.returncode == 0, generate.stderr
    assert generate.stdout.strip(), "no text generated"
    assert "completion_tokens=8" in generate.stderr and "image_tokens=16" in generate.stderr

    if http := re.search(r"HTTP\s+(http://\S+/v1)", output):
        _check_openai_http(http.group(1), image)

    bad = subprocess.run(
        _tandem("generate", "--address", address, "--image", str(ROOT / "pyproject.toml"), "describe"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: INVALID_ARGUMENT: ") and "Traceback" not in bad.stderr

    up.process.send_signal(signal.SIGTERM)
    assert up.process.wait(timeout=60) == 0
    output = up.drain()
    assert "Tandem stopped." in output
    assert (
        output.index("gateway  stopping")
        < output.index("llm      stopping")
        < output.index("redis    stopped")
    )
    lingering = [" ".join(c.cmdline()) for c in children if _alive(c)]
    assert not lingering, lingering


def test_up_exits_non_zero_with_the_log_when_a_service_fails(tmp_path: Path) -> None:
    model = tmp_path / "unknown-model"
    model.mkdir()
    (model / "config.json").write_text(
        '{"architectures": ["FrobnicatorForConditionalGeneration"], "vision_config": {}}'
    )
    running = Up(
        ["--model", str(model), "--grpc-port", "0", "--device", "cpu", "--log-dir", str(tmp_path / "logs")]
    )
    family: list[psutil.Process] = []
    try:
        family = _descendants(running.process.pid)
        assert running.process.wait(timeout=180) == 1
        output = running.drain()
        assert "during start-up; last lines of" in output
        tail = output.split("during start-up; last lines of", 1)[1]
        assert re.search(r"(?i)error", tail), tail  # the service's own error, from its log
        assert "Tandem stopped." in output
    finally:
        if running.process.poll() is None:
            running.process.kill()
        for process in family:
            if _alive(process):
                process.kill()


def _readme_example() -> tuple[list[str], str]:
    """The quick start's `tandem generate` command line (as argv) and the answer shown after it."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```bash\n(tandem generate [^\n]+)\n```\s*```text\n([^\n]+)\n```", readme)
    assert match, "README quick start lost its example command and answer"
    return shlex.split(match.group(1))[1:], match.group(2)


def test_up_serves_the_default_model_with_the_readme_answers(tmp_path: Path) -> None:
    """No --model: the shipped default model answers the README's questions as the README says."""
    argv, answer = _readme_example()
    env = {name: value for name, value in _env().items() if name != "TANDEM_MODEL"}
    running = Up(["--grpc-port", "0", "--http-port", "-1", "--log-dir", str(tmp_path / "logs")], env)
    family = _descendants(running.process.pid)
    try:
        match = running.wait_for(READY, timeout=240)
        assert "Tandem's default model" in running.drain()
        address = f"{match.group(1)}:{match.group(2)}"
        done = subprocess.run(
            _tandem(argv[0], "--address", address, *argv[1:]),
            capture_output=True,
            text=True,
            env=_env(),
            cwd=ROOT,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == answer

        from tandem import pipeline

        readme = (ROOT / "README.md").read_text()
        with pipeline(address) as pipe:
            colour = pipe(("What colour is the triangle?", str(ROOT / "examples" / "shapes.png"))).text
            session = pipe.chat(("How many shapes are there?", str(ROOT / "examples" / "shapes.png")))
            count = session.response.text
            session = pipe.chat("Which shape is blue?", session=session)
            where = session.response.text
            session.close()
        assert (colour, count, where) == (
            "The triangle is yellow.",
            "There are three shapes.",
            "The blue shape is a square.",
        )
        assert f"# {colour}" in readme and f"# {where}" in readme
    finally:
        family += _descendants(running.process.pid)
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGTERM)
            try:
                running.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                running.process.kill()
        for process in family:
            if _alive(process):
                process.kill()
