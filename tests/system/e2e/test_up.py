"""``tandem up`` as a real subprocess: all services, embedded Redis, a request, a clean stop."""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.default_model import CHECKPOINT
from tests.support import ROOT
from tests.support.up_process import READY, Up, alive, descendants, running_up, tandem_argv, tandem_env

pytestmark = pytest.mark.slow


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


@pytest.fixture
def up(checkpoint, tmp_path: Path) -> Iterator[Up]:  # type: ignore[no-untyped-def]
    model = checkpoint("llava")
    argv = ["--model", str(model), "--grpc-port", "0", "--http-port", "0", "--device", "cpu"]
    with running_up([*argv, "--log-dir", str(tmp_path / "logs")]) as running:
        yield running


def test_up_serves_a_request_and_stops_cleanly(up: Up) -> None:
    match = up.wait_for(READY, timeout=240)
    address = f"{match.group(1)}:{match.group(2)}"
    children = descendants(up.process.pid)
    names = " ".join(" ".join(c.cmdline()) for c in children)
    for expected in ("vision_service", "llm_service", "-m gateway", "redis-server"):
        assert expected in names, names
    output = up.drain()
    for service in ("vision", "llm", "gateway"):
        assert re.search(rf"{service}\s+SERVING in [\d.]+ s", output), output

    image = ROOT / "examples" / "shapes.png"
    generate = subprocess.run(
        tandem_argv(
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
        env=tandem_env(),
        timeout=120,
    )
    assert generate.returncode == 0, generate.stderr
    assert generate.stdout.strip(), "no text generated"
    assert "completion_tokens=8" in generate.stderr and "image_tokens=16" in generate.stderr

    if http := re.search(r"HTTP\s+(http://\S+/v1)", output):
        _check_openai_http(http.group(1), image)

    bad = subprocess.run(
        tandem_argv("generate", "--address", address, "--image", str(ROOT / "pyproject.toml"), "describe"),
        capture_output=True,
        text=True,
        env=tandem_env(),
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
    lingering = [" ".join(c.cmdline()) for c in children if alive(c)]
    assert not lingering, lingering


def test_up_exits_non_zero_with_the_log_when_a_service_fails(tmp_path: Path) -> None:
    # A checkpoint that passes `tandem up`'s own checks (a known family) but whose weights do
    # not load: the services fail while starting, not `tandem up`'s argument checks.
    model = tmp_path / "broken-weights"
    shutil.copytree(CHECKPOINT, model)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    argv = ["--model", str(model), "--grpc-port", "0", "--device", "cpu", "--log-dir", str(tmp_path / "logs")]
    with running_up(argv) as running:
        assert running.process.wait(timeout=180) == 1
        output = running.drain()
        assert "during start-up; last lines of" in output
        tail = output.split("during start-up; last lines of", 1)[1]
        assert re.search(r"(?i)error", tail), tail  # the service's own error, from its log
        assert "Tandem stopped." in output


def _readme_example() -> tuple[list[str], str]:
    """The quick start's `tandem generate` command line (as argv) and the answer shown after it."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```bash\n(tandem generate [^\n]+)\n```\s*```text\n([^\n]+)\n```", readme)
    assert match, "README quick start lost its example command and answer"
    return shlex.split(match.group(1))[1:], match.group(2)


def test_up_serves_the_default_model_with_the_readme_answers(tmp_path: Path) -> None:
    """No --model: the shipped default model answers the README's questions as the README says."""
    argv, answer = _readme_example()
    argv_up = ["--grpc-port", "0", "--http-port", "-1", "--log-dir", str(tmp_path / "logs")]
    with running_up(argv_up) as running:
        match = running.wait_for(READY, timeout=240)
        assert "Tandem's default model" in running.drain()
        address = f"{match.group(1)}:{match.group(2)}"
        done = subprocess.run(
            tandem_argv(argv[0], "--address", address, *argv[1:]),
            capture_output=True,
            text=True,
            env=tandem_env(),
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
