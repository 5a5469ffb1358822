"""The Gemma 3 language adapter on the tiny checkpoint: the processor's prompt (image blocks
rewritten in the text), image rows as bidirectional attention blocks exactly where HF's
``token_type_ids`` put them, both end-of-turn ids, and a prefill chunked through the middle of
image blocks (the engine moves the cut), or a prefix-cache hit backed off to an image block's
start, still equal to HF ``generate``."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Gemma3ForConditionalGeneration

from llm_service.adapters import adapter_for
from llm_service.adapters.base import ImageSpan
from llm_service.adapters.gemma3 import Gemma3Adapter
from llm_service.config import LlmConfig
from llm_service.conversation import ChatMessage, ImageRef, TextPart
from llm_service.engine import Engine, EngineConfig, EngineRequest, SamplingConfig
from llm_service.loader import load
from llm_service.prompt import PromptBuilder
from tandem.errors import InvalidInput
from tandem.testing.checkpoints import make_test_image
from tests.support.engines import running_engine

IMAGE = ImageRef("ab" * 32, 4)


@pytest.fixture(scope="module")
def path(checkpoint) -> Path:  # type: ignore[no-untyped-def]
    return checkpoint("gemma3")  # type: ignore[no-any-return]


def _conversation() -> tuple[list[ChatMessage], list[dict[str, Any]]]:
    ours = [
        ChatMessage("user", (IMAGE, TextPart("What is in this image?"))),
        ChatMessage("assistant", (TextPart("It shows a small bird."),)),
        ChatMessage("user", (IMAGE, TextPart("Compare"), IMAGE, TextPart("these two."))),
    ]
    seeds = iter((9, 10, 11))  # images whose answer changes at once without bidirectional blocks
    hf = [
        {
            "role": m.role,
            "content": [
                {"type": "text", "text": p.text}
                if isinstance(p, TextPart)
                else {"type": "image", "image": make_test_image(next(seeds))}
                for p in m.parts
            ],
        }
        for m in ours
    ]
    return ours, hf


def _hf_inputs(path: Path, hf: list[dict[str, Any]]) -> Any:
    processor = AutoProcessor.from_pretrained(path)
    return processor.apply_chat_template(
        hf, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def test_prompt_and_attention_blocks_equal_the_processor(path: Path) -> None:
    adapter = adapter_for(AutoConfig.from_pretrained(path))
    assert isinstance(adapter, Gemma3Adapter)
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = (path / "chat_template.jinja").read_text()
    builder = PromptBuilder(tokenizer, template, adapter.add_special_tokens, adapter.expander(tokenizer))
    ours, hf = _conversation()
    layout = adapter.layout(builder.build(ours), [IMAGE] * 3)
    inputs = _hf_inputs(path, hf)
    assert layout.token_ids == inputs["input_ids"][0].tolist()
    image_rows = torch.zeros(len(layout.token_ids), dtype=torch.long)
    for start, end in adapter.attention_blocks(layout):
        image_rows[start:end] = 1
    assert torch.equal(image_rows, inputs["token_type_ids"][0])


def test_wrong_token_count_is_refused(path: Path) -> None:
    adapter = adapter_for(AutoConfig.from_pretrained(path))
    with pytest.raises(InvalidInput, match="takes 4 per image"):
        adapter.check_image(ImageSpan(0, ImageRef("cd" * 32, 5)))


def test_both_end_of_turn_ids_stop_generation(path: Path) -> None:
    loaded = load(LlmConfig(model=str(path), device="cpu"))
    vocab = loaded.tokenizer.get_vocab()
    assert loaded.eos_token_ids == (vocab["<eos>"], vocab["<end_of_turn>"])


def _request_and_expected(path: Path, loaded: Any) -> tuple[EngineRequest, list[int]]:
    """The conversation as an engine request (image rows as attention blocks) and HF's answer."""
    full = Gemma3ForConditionalGeneration.from_pretrained(path).eval()
    inputs = _hf_inputs(path, _conversation()[1])
    ids = inputs["input_ids"][0]
    with torch.no_grad():
        expected = full.generate(**inputs, do_sample=False, max_new_tokens=8)[0, len(ids) :].tolist()
        features = full.get_image_features(inputs["pixel_values"]).pooler_output.flatten(0, 1)
    embeds = loaded.model.embed(ids)
    embeds[ids == full.config.image_token_id] = features
    rows = (inputs["token_type_ids"][0] == 1).nonzero().flatten().tolist()
    blocks = tuple((start, start + 4) for start in rows[::4])
    request = EngineRequest(
        "chunked", ids.tolist(), ids.tolist(), embeds, torch.arange(len(ids))[None], len(ids),
        SamplingConfig(max_new_tokens=8), attention_blocks=blocks,
    )  # fmt: skip
    return request, expected


async def _generate(engine: Engine, request: EngineRequest) -> tuple[list[int], int]:
    events = [event async for event in engine.generate(request)]
    assert events[-1].usage is not None
    return [t for event in events for t in event.token_ids], events[-1].usage.cached_tokens


async def test_prefill_chunked_inside_image_blocks_equals_hf(path: Path) -> None:
    loaded = load(LlmConfig(model=str(path), device="cpu"))
    request, expected = _request_and_expected(path, loaded)
    blocks = request.attention_blocks
    config = EngineConfig(context_length=512, max_prefill_tokens=blocks[0][0] + 2)  # cuts block 0
    engine = Engine(loaded.model, loaded.tokenizer, config, loaded.eos_token_ids)
    with running_engine(engine):
        tokens, _ = await _generate(engine, request)
        await asyncio.sleep(0)
    assert tokens == expected


async def test_a_prefix_hit_never_ends_inside_an_image_block_and_equals_hf(path: Path) -> None:
    loaded = load(LlmConfig(model=str(path), device="cpu"))
    request, expected = _request_and_expected(path, loaded)
    start = request.attention_blocks[-1][0]
    # a prompt that stops half-way through the last image: its KV there saw half the block only
    cut = dataclasses.replace(
        request,
        prompt_keys=request.prompt_keys[: start + 2],
        prompt_token_ids=request.prompt_token_ids[: start + 2],
        inputs_embeds=request.inputs_embeds[: start + 2],
        position_ids=request.position_ids[:, : start + 2],
        next_position=start + 2,
        attention_blocks=(*request.attention_blocks[:-1], (start, start + 2)),
    )
    config = EngineConfig(context_length=512, prefix_block_size=4)
    engine = Engine(loaded.model, loaded.tokenizer, config, loaded.eos_token_ids)
    with running_engine(engine):
        await _generate(engine, dataclasses.replace(cut, sampling=SamplingConfig(max_new_tokens=1)))
        tokens, cached = await _generate(engine, request)
    assert cached == start  # the cached start+2 positions end inside the image block: backed off
    assert tokens == expected
