"""The Qwen2.5-VL language adapter on the tiny checkpoint: its half of the weights, the prompt
the processor builds (placeholders expanded per image grid) and M-RoPE positions equal to
transformers' ``get_rope_index`` for images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from llm_service.adapters import Adapter, adapter_for
from llm_service.adapters.base import ImageSpan, PromptLayout
from llm_service.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from llm_service.config import LlmConfig
from llm_service.conversation import ChatMessage, ImageRef, TextPart
from llm_service.loader import load
from llm_service.prompt import PromptBuilder
from tandem.errors import InvalidInput
from tandem.testing.checkpoints import make_test_image

SIZES = ((64, 48), (112, 56), (84, 112))  # grids 1x4x4, 1x4x8, 1x8x6: 4, 8 and 12 tokens


@pytest.fixture(scope="module")
def path(checkpoint) -> Path:  # type: ignore[no-untyped-def]
    return checkpoint("qwen2_5_vl")  # type: ignore[no-any-return]


def _builder(path: Path) -> tuple[PromptBuilder, Adapter]:
    adapter = adapter_for(AutoConfig.from_pretrained(path))
    template = (path / "chat_template.jinja").read_text()
    return PromptBuilder(AutoTokenizer.from_pretrained(path), template, adapter.add_special_tokens), adapter


def _conversation() -> tuple[list[ChatMessage], list[dict[str, Any]]]:
    """Ours and HF's two-turn conversation: one image, an answer, then two more images."""
    image = ImageRef("ab" * 32, 1)
    ours = [
        ChatMessage("user", (image, TextPart("What is in this image?"))),
        ChatMessage("assistant", (TextPart("It shows a small bird."),)),
        ChatMessage("user", (image, TextPart("Compare"), image, TextPart("these two."))),
    ]
    sizes = iter(SIZES)
    hf = [
        {
            "role": m.role,
            "content": [
                {"type": "text", "text": p.text}
                if isinstance(p, TextPart)
                else {"type": "image", "image": make_test_image(7, next(sizes))}
                for p in m.parts
            ],
        }
        for m in ours
    ]
    return ours, hf


def test_registered_and_holds_only_the_language_half(path: Path) -> None:
    loaded = load(LlmConfig(model=str(path), device="cpu"))
    assert isinstance(loaded.adapter, Qwen2_5_VLAdapter) and loaded.model.position_dims == 3
    full = Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
    vision = sum(p.numel() for n, p in full.named_parameters() if ".visual." in f".{n}")
    assert loaded.model.parameter_count() == sum(p.numel() for p in full.parameters()) - vision
    assert not any("visual" in name for name, _ in loaded.model.module.named_parameters())
    ids = torch.tensor([5, 6, 7, 8, 9])
    positions = torch.arange(len(ids)).expand(3, 1, -1)
    logits, _ = loaded.model.forward(loaded.model.embed(ids)[None], positions, torch.ones(1, 5), None)
    with torch.no_grad():
        expected = full(input_ids=ids[None]).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=1e-5)


def test_prompt_and_positions_equal_the_processor_and_get_rope_index(path: Path) -> None:
    builder, adapter = _builder(path)
    ours, hf = _conversation()
    processor = AutoProcessor.from_pretrained(path)
    assert builder.render(ours) == processor.apply_chat_template(hf, add_generation_prompt=True)
    inputs = processor.apply_chat_template(
        hf, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    grids = [tuple(int(g) for g in grid) for grid in inputs["image_grid_thw"]]
    assert grids == [(1, 4, 4), (1, 4, 8), (1, 8, 6)]  # non-square: the max(h, w) rule matters
    images = [ImageRef(f"{i:064x}", math.prod(g) // 4, g) for i, g in enumerate(grids)]
    layout = adapter.layout(builder.build(ours), images)
    assert layout.token_ids == inputs["input_ids"][0].tolist()
    layout = PromptLayout(
        layout.token_ids, [ImageSpan(s.start, s.image, s.image.grid_thw) for s in layout.spans]
    )
    for span in layout.spans:
        adapter.check_image(span)
    positions, next_position = adapter.positions(layout)
    full = Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
    expected, delta = full.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    assert torch.equal(positions, expected[:, 0, :])
    assert next_position == len(layout.token_ids) + int(delta[0, 0])


def test_a_grid_that_disagrees_with_the_token_count_is_refused(path: Path) -> None:
    _, adapter = _builder(path)
    with pytest.raises(InvalidInput, match="does not give num_tokens"):
        adapter.check_image(ImageSpan(0, ImageRef("ab" * 32, 5), (1, 4, 4)))
    dummy = adapter.dummy_image()
    adapter.check_image(ImageSpan(0, dummy, dummy.grid_thw))
