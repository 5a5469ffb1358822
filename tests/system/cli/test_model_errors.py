"""A model that cannot be found is one line on stderr and a non-zero exit, no traceback: for
``tandem up --model`` (before anything starts) and for each worker's own ``python -m``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'protos'}", "HF_HUB_OFFLINE": "1"}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=180, cwd=ROOT, env=ENV
    )


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("{tmp}/missing", "model path '{tmp}/missing' does not exist"),
        ("{tmp}/file.txt", "model path '{tmp}/file.txt' is a file, not a checkpoint folder"),
        ("{tmp}", "{tmp} has no config.json"),
        ("no-such-org/no-such-model", "'no-such-org/no-such-model' is not a checkpoint folder nor in"),
        ("bad id!!", "'bad id!!' is neither a checkpoint folder nor a valid Hugging Face hub id"),
    ],
)
def test_up_with_a_missing_model_is_one_line_and_exit_2(tmp_path: Path, model: str, message: str) -> None:
    (tmp_path / "file.txt").write_text("not a model")
    result = run("tandem.cli", "up", "--model", model.format(tmp=tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"tandem up: {result.stderr.removeprefix('tandem up: ')}", result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert message.format(tmp=tmp_path) in result.stderr
    assert "starting Tandem" not in result.stdout  # nothing was started


@pytest.mark.parametrize(
    ("service", "model"),
    [("llm_service", "{tmp}/missing"), ("vision_service", "no-such-org/no-such-model")],
)
def test_a_worker_with_a_missing_model_logs_one_error_line(tmp_path: Path, service: str, model: str) -> None:
    result = run(service, "--model", model.format(tmp=tmp_path), "--port", "0")
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and model.format(tmp=tmp_path) in errors[0], output
