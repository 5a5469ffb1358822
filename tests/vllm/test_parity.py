"""Greedy answers through the vLLM engine equal Hugging Face ``generate()``, token for token.

The tiny LLaVA, Qwen2-VL and Qwen2.5-VL checkpoints (float32, 32-wide heads: checkpoints.py) run in vLLM
with their vision towers skipped; the image features come from HF's own vision tower as inline
embedding records, exactly what the vision service sends, and enter vLLM as embeddings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("vllm")

from tests.vllm.support import HFOracle, collect, picture, tandem_request, tokens, vllm_worker

pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="module")]

QUESTION = "What is in this image?"


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["llava", "qwen2_vl", "qwen2_5_vl"])
async def served(request: Any, vllm_checkpoint: Any) -> AsyncIterator[tuple[Any, HFOracle]]:
    path = vllm_checkpoint(request.param)
    async with vllm_worker(path) as worker:
        yield worker, HFOracle.load(path)


async def answer(served: tuple[Any, HFOracle], conversation: list[Any], request_id: str) -> list[int]:
    worker, oracle = served
    events = await collect(worker.generate(tandem_request(oracle, worker, conversation, request_id)))
    return tokens(events)


async def test_one_image_equals_hf(served: tuple[Any, HFOracle]) -> None:
    conversation = [("user", [picture(1), QUESTION])]
    assert await answer(served, conversation, "one") == served[1].generate(conversation)


async def test_two_images_of_different_sizes_equal_hf(served: tuple[Any, HFOracle]) -> None:
    conversation = [("user", [picture(2, (112, 56)), picture(3, (84, 112)), "Compare them."])]
    assert await answer(served, conversation, "two") == served[1].generate(conversation)


async def test_text_only_turn_equals_hf(served: tuple[Any, HFOracle]) -> None:
    conversation = [("user", ["Hello, how are you?"])]
    assert await answer(served, conversation, "text") == served[1].generate(conversation)


async def test_second_turn_equals_hf(served: tuple[Any, HFOracle]) -> None:
    first = [("user", [picture(4), QUESTION])]
    reply = served[1].processor.tokenizer.decode(await answer(served, first, "t1"), skip_special_tokens=True)
    second = [*first, ("assistant", [reply]), ("user", ["And the colours?"])]
    assert await answer(served, second, "t2") == served[1].generate(second)
