"""examples/grpc_client.py runs against the live gateway with the generated stubs alone."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tandem import GenerationConfig, pipeline
from tests.support import ROOT
from tests.support.client_stack import Stack

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "grpc_client.py"
# Run the example with `tandem` made unimportable: it must need only grpc and the vlm.v1 stubs.
NO_TANDEM = (
    "import runpy, sys; sys.modules['tandem'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_example_grpc_client(client_stack: Stack, tmp_path: Path) -> None:
    image = tmp_path / "shapes.png"
    picture = Image.new("RGB", (64, 48), "navy")
    picture.paste("orange", (8, 8, 40, 30))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    image.write_bytes(buffer.getvalue())
    argv = [str(EXAMPLE), "--address", client_stack.open.grpc, "--image", str(image), "--max-new-tokens", "5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "protos")}
    done = subprocess.run(
        [sys.executable, "-c", NO_TANDEM, *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("model: LlavaForConditionalGeneration vlm=True")
    generated = ast.literal_eval(next(line for line in lines if line.startswith("generate: "))[10:])
    assert sum(line.startswith("chat: ") for line in lines) == 2
    assert "history: 4 messages" in lines and lines[-1] == "deleted"
    with pipeline(client_stack.open.grpc, gen_config=GenerationConfig(max_new_tokens=5)) as pipe:
        assert pipe(("Describe the image.", image)).text == generated
