"""``python -m llm_service`` on a checkpoint without a chat template: one error line naming
``--chat-template`` and exit 2, before any weights load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'protos'}", "HF_HUB_OFFLINE": "1"}


def without_template(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    (target / "chat_template.jinja").unlink(missing_ok=True)
    config = target / "tokenizer_config.json"
    config.write_text(
        json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "chat_template"})
    )
    return target


def test_a_checkpoint_without_a_template_names_the_flag(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = without_template(checkpoint("qwen3"), tmp_path / "bare")
    result = subprocess.run(
        [sys.executable, "-m", "llm_service", "--model", str(model), "--port", "0"],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env=ENV,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "has no chat template; give one with --chat-template" in errors[0], output
    assert "Traceback" not in output
