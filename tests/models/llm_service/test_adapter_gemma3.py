"""The Gemma 3 language adapter on the tiny checkpoint: the processor's prompt (image blocks
rewritten in the text), image rows as bidirectional attention blocks exactly where HF's
``token_type_ids`` put them, both end-of-turn ids, and a prefill chunked through the middle of
image blocks (the engine moves the cut) still equal to HF ``generate``."""

from __future__ import annotations

import asyncio
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


async def test_prefill_chunked_inside_image_blocks_equals_hf(path: Path) -> None:
    loaded = load(LlmConfig(model=str(path), device="cpu"))
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
    config = EngineConfig(context_length=512, max_prefill_tokens=blocks[0][0] + 2)  # cuts block 0
    engine = Engine(loaded.model, loaded.tokenizer, config, loaded.eos_token_ids)
    with running_engine(engine):
        events = [event async for event in engine.generate(request)]
        await asyncio.sleep(0)
    assert [t for event in events for t in event.token_ids] == expected
