"""Tandem's trained default model answers the README's questions identically on vLLM and in HF
``generate()`` (which Tandem's own engine equals: tests/system/e2e); its heads are 32 wide, so
vLLM's CPU build runs the shipped checkpoint as it is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

pytest.importorskip("vllm")

from tandem.default_model import CHECKPOINT
from tests.vllm.support import HFOracle, collect, picture, tandem_request, tokens, vllm_worker

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module")]

SHAPES = Path(__file__).parents[2] / "examples" / "shapes.png"
QUESTIONS = (
    "What shape is this?",
    "What colour is the square?",
    "How many shapes are there?",
    "Where is the star?",
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served() -> AsyncIterator[tuple[Any, HFOracle]]:
    path = Path(CHECKPOINT)
    async with vllm_worker(path) as worker:
        yield worker, HFOracle.load(path)


@pytest.mark.parametrize("question", QUESTIONS)
async def test_readme_questions(served: tuple[Any, HFOracle], question: str) -> None:
    worker, oracle = served
    conversation = [("user", [Image.open(SHAPES).convert("RGB"), question])]
    events = await collect(worker.generate(tandem_request(oracle, worker, conversation, question)))
    assert tokens(events) == oracle.generate(conversation, max_new_tokens=24)[: len(tokens(events))]
    assert events[-1].finish_reason == "stop"  # the model ends its short answer itself


async def test_two_image_question(served: tuple[Any, HFOracle]) -> None:
    worker, oracle = served
    images = [Image.open(SHAPES).convert("RGB"), picture(7, (96, 96))]
    conversation = [("user", [*images, "Which image has the red square, the first or the second?"])]
    events = await collect(worker.generate(tandem_request(oracle, worker, conversation, "two")))
    assert tokens(events) == oracle.generate(conversation, max_new_tokens=24)[: len(tokens(events))]
