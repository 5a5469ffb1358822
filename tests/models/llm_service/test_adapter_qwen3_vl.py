"""The Qwen3-VL language adapter on the tiny checkpoint: its half of the weights, the processor's
prompt, M-RoPE positions equal to ``get_rope_index``, and the deepstack features added to decoder
layers during prefill -- chunked through the middle of an image, and batched next to a text-only
row -- equal to HF ``generate``; without them the answer changes."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

from llm_service.adapters import adapter_for
from llm_service.adapters.base import ImageSpan, PromptLayout
from llm_service.adapters.qwen3_vl import Qwen3VLAdapter
from llm_service.config import LlmConfig
from llm_service.conversation import ChatMessage, ImageRef, TextPart
from llm_service.engine import Engine, EngineConfig, EngineRequest, SamplingConfig
from llm_service.loader import LoadedModel, load
from llm_service.prompt import PromptBuilder
from tandem.embeddings import record
from tandem.embeddings.cache import Embedding
from tandem.errors import InvalidInput
from tandem.testing.checkpoints import make_test_image
from tests.support.engines import running_engine

SIZES = ((64, 64), (112, 56), (84, 112))  # grids 1x4x4, 1x4x8, 1x8x6 (patch 16): 4, 8, 12 tokens
N = 8


@pytest.fixture(scope="module")
def path(checkpoint) -> Path:  # type: ignore[no-untyped-def]
    return checkpoint("qwen3_vl")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def loaded(path: Path) -> LoadedModel:
    return load(LlmConfig(model=str(path), device="cpu"))


@pytest.fixture(scope="module")
def full(path: Path) -> Qwen3VLForConditionalGeneration:
    return Qwen3VLForConditionalGeneration.from_pretrained(path).eval()


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


def _hf_inputs(path: Path, hf: list[dict[str, Any]]) -> Any:
    return AutoProcessor.from_pretrained(path).apply_chat_template(
        hf, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def _layout(path: Path, adapter: Qwen3VLAdapter, inputs: Any) -> PromptLayout:
    template = (path / "chat_template.jinja").read_text()
    builder = PromptBuilder(AutoTokenizer.from_pretrained(path), template, adapter.add_special_tokens)
    grids = [tuple(int(g) for g in grid) for grid in inputs["image_grid_thw"]]
    images = [ImageRef(f"{i:064x}", math.prod(g) // 4, g) for i, g in enumerate(grids)]
    layout = adapter.layout(builder.build(_conversation()[0]), images)
    return PromptLayout(
        layout.token_ids, [ImageSpan(s.start, s.image, s.image.grid_thw) for s in layout.spans]
    )


def _embeddings(full: Qwen3VLForConditionalGeneration, inputs: Any, layout: PromptLayout) -> list[Embedding]:
    """HF's features per image, as the records the vision service writes."""
    with torch.no_grad():
        out = full.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    embeddings = []
    for n, span in enumerate(layout.spans):
        extras = {"deepstack": torch.stack([layer[n] for layer in out.deepstack_features])}
        header = record.header_of(
            fingerprint="f" * 32, image_id=span.image.image_id, tensor=out.pooler_output[n], extras=extras
        )
        embeddings.append(Embedding(header, out.pooler_output[n], extras))
    return embeddings


def _request(
    loaded: LoadedModel, layout: PromptLayout, embeddings: list[Embedding], deepstack: bool
) -> EngineRequest:
    adapter = loaded.adapter
    embeds = loaded.model.embed(torch.tensor(layout.token_ids))
    for span, embedding in zip(layout.spans, embeddings, strict=True):
        embeds[span.start : span.end] = embedding.features
    positions, next_position = adapter.positions(layout)
    layers = adapter.layer_inputs(layout, embeddings) if deepstack else None
    return EngineRequest(
        "q3", layout.token_ids, layout.token_ids, embeds, positions, next_position,
        SamplingConfig(max_new_tokens=N), layer_inputs=layers,
    )  # fmt: skip


async def _generate(loaded: LoadedModel, request: EngineRequest, max_prefill_tokens: int) -> list[int]:
    config = EngineConfig(context_length=512, max_prefill_tokens=max_prefill_tokens)
    engine = Engine(loaded.model, loaded.tokenizer, config, loaded.eos_token_ids)
    with running_engine(engine):
        events = [event async for event in engine.generate(request)]
        await asyncio.sleep(0)
    return [t for event in events for t in event.token_ids]


def test_registered_and_holds_only_the_language_half(
    loaded: LoadedModel, full: Qwen3VLForConditionalGeneration
) -> None:
    assert isinstance(loaded.adapter, Qwen3VLAdapter) and loaded.model.position_dims == 3
    assert loaded.adapter.extras == ("deepstack",) and loaded.model.takes_layer_inputs
    vision = sum(p.numel() for n, p in full.named_parameters() if ".visual." in f".{n}")
    assert loaded.model.parameter_count() == sum(p.numel() for p in full.parameters()) - vision
    ids = torch.tensor([5, 6, 7, 8, 9])
    positions = torch.arange(len(ids)).expand(3, 1, -1)
    logits, _ = loaded.model.forward(loaded.model.embed(ids)[None], positions, torch.ones(1, 5), None)
    with torch.no_grad():
        expected = full(input_ids=ids[None]).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=1e-5)


def test_prompt_and_positions_equal_the_processor_and_get_rope_index(
    path: Path, loaded: LoadedModel, full: Qwen3VLForConditionalGeneration
) -> None:
    adapter = loaded.adapter
    assert isinstance(adapter, Qwen3VLAdapter)
    inputs = _hf_inputs(path, _conversation()[1])
    assert [tuple(g) for g in inputs["image_grid_thw"].tolist()] == [(1, 4, 4), (1, 4, 8), (1, 8, 6)]
    layout = _layout(path, adapter, inputs)
    assert layout.token_ids == inputs["input_ids"][0].tolist()
    for span in layout.spans:
        adapter.check_image(span)
    positions, next_position = adapter.positions(layout)
    expected, delta = full.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    assert torch.equal(positions, expected[:, 0, :])
    assert next_position == len(layout.token_ids) + int(delta[0, 0])


async def test_deepstack_prefill_chunked_inside_an_image_equals_hf(
    path: Path, loaded: LoadedModel, full: Qwen3VLForConditionalGeneration
) -> None:
    assert isinstance(loaded.adapter, Qwen3VLAdapter)
    inputs = _hf_inputs(path, _conversation()[1])
    with torch.no_grad():
        expected = full.generate(**inputs, do_sample=False, max_new_tokens=N)[
            0, inputs["input_ids"].shape[1] :
        ]
    layout = _layout(path, loaded.adapter, inputs)
    embeddings = _embeddings(full, inputs, layout)
    middle = layout.spans[1].start + 3  # chunks of this many positions end inside images 1 and 2
    assert await _generate(loaded, _request(loaded, layout, embeddings, True), middle) == expected.tolist()
    assert await _generate(loaded, _request(loaded, layout, embeddings, True), 512) == expected.tolist()
    without = await _generate(loaded, _request(loaded, layout, embeddings, False), 512)
    assert without != expected.tolist()  # the deepstack features decide the answer


def test_a_text_row_batched_next_to_deepstack_rows_is_unchanged(
    path: Path, loaded: LoadedModel, full: Qwen3VLForConditionalGeneration
) -> None:
    """Zero additions leave a text-only row exactly as it is alone (one padded prefill forward)."""
    inputs = _hf_inputs(path, _conversation()[1])
    adapter = loaded.adapter
    assert isinstance(adapter, Qwen3VLAdapter)
    layout = _layout(path, adapter, inputs)
    layers = adapter.layer_inputs(layout, _embeddings(full, inputs, layout))
    assert layers is not None and layers.shape == (len(layout.token_ids), 2, 64)
    model, length = loaded.model, len(layout.token_ids)
    text = model.embed(torch.tensor(layout.token_ids))  # the same prompt, image rows as plain tokens
    positions, mask = torch.arange(length).expand(3, 2, -1), torch.ones(2, length)
    plain, _ = model.forward(torch.stack([text, text]), positions, mask, None)
    packed = torch.cat([text, torch.zeros(length, 2 * 64)], dim=1)
    with_images = torch.cat([text, layers.flatten(1)], dim=1)
    both, _ = model.forward(torch.stack([packed, with_images]), positions, mask, None)
    assert torch.equal(both[0], plain[0])
    assert not torch.allclose(both[1], plain[1], atol=1e-3)


def test_a_record_without_deepstack_or_with_the_wrong_shape_is_refused(loaded: LoadedModel) -> None:
    adapter = loaded.adapter
    image = adapter.dummy_image()
    layout = PromptLayout([0] * image.num_tokens, [ImageSpan(0, image, image.grid_thw)])
    features = torch.zeros(image.num_tokens, 64)
    wrong = {"deepstack": torch.zeros(3, image.num_tokens, 64)}
    header = record.header_of(fingerprint="f" * 32, image_id=image.image_id, tensor=features, extras=wrong)
    for extras in (wrong, {}):
        with pytest.raises(InvalidInput, match="deepstack features"):
            adapter.layer_inputs(layout, [Embedding(header, features, extras)])
    dummy = adapter.dummy_extras(image.num_tokens, torch.float32)
    assert adapter.layer_inputs(layout, [Embedding(header, features, dummy)]) is not None
    config = AutoConfig.from_pretrained(loaded.path)
    assert adapter_for(config).extras == ("deepstack",)
