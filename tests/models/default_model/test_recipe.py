"""The default model's tools: the seeded training script and the evaluation command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from recipes.default_model.train import TrainConfig, train
from tandem.default_model import CHECKPOINT
from tests.support import ROOT


def _tiny_run(out: Path) -> dict[str, object]:
    config = TrainConfig(out=out, steps=3, vision_steps=3, batch_size=4, vision_batch_size=4, log_every=1)
    return train(config)


@pytest.mark.slow
def test_training_is_seeded_and_saves_a_loadable_checkpoint(tmp_path: Path) -> None:
    first, second = _tiny_run(tmp_path / "a"), _tiny_run(tmp_path / "b")
    assert first["final_loss"] == second["final_loss"]
    weights = [(tmp_path / run / "model.safetensors").read_bytes() for run in ("a", "b")]
    assert weights[0] == weights[1]
    summary = json.loads((tmp_path / "a" / "training.json").read_text())
    assert summary["config"]["steps"] == 3 and summary["config"]["seed"] == 0
    processor = AutoProcessor.from_pretrained(tmp_path / "a")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "a")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.tokenizer.get_vocab() == AutoProcessor.from_pretrained(CHECKPOINT).tokenizer.get_vocab()


def _evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "recipes.default_model.evaluate", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=280)


def test_evaluate_help_explains_itself() -> None:
    done = _evaluate("--help")
    assert done.returncode == 0
    assert "--address" in done.stdout and "tandem up" in done.stdout


@pytest.mark.slow
def test_evaluate_command_runs_the_whole_system(tmp_path: Path) -> None:
    """Default mode: starts `tandem up` itself, scores both ways, stops it, exits 0 when equal."""
    report_file = tmp_path / "report.json"
    done = _evaluate("--n", "2", "--json", str(report_file))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report["gateway"]["agreement"] == 1.0
    assert report["gateway"]["scores"] == report["in_process"]["scores"]
    assert report["in_process"]["scores"]["all"]["n"] == 16
    assert "Tandem stopped." in done.stderr  # `tandem up` was shut down cleanly
    assert "answers identical in-process vs gateway: 100.0%" in done.stdout
