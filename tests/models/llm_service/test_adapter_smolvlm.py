"""SmolVLM's language half on the tiny checkpoint: weights, and ``<image>`` written as the
processor's block of tiles for each image's grid (or the global image alone)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor, SmolVLMForConditionalGeneration

from llm_service.adapters import ADAPTERS
from llm_service.adapters.smolvlm import SmolVLMAdapter
from llm_service.config import LlmConfig
from llm_service.conversation import ChatMessage, ImageRef, TextPart
from llm_service.loader import LoadedModel, load
from llm_service.prompt import PromptBuilder
from tandem.errors import InvalidInput
from tandem.testing.checkpoints import make_test_image

SIZES = ((112, 56), (84, 112))  # (width, height): 1x2 and 2x2 tiles of 4 tokens, plus the global image


@pytest.fixture(scope="module")
def loaded(checkpoint) -> LoadedModel:  # type: ignore[no-untyped-def]
    return load(LlmConfig(model=str(checkpoint("smolvlm")), device="cpu"))


def _prompt(loaded: LoadedModel, refs: list[ImageRef]) -> list[int]:
    builder = PromptBuilder(loaded.tokenizer, loaded.chat_template, loaded.adapter.add_special_tokens)
    return builder.build([ChatMessage("user", (refs[0], TextPart("And"), *refs[1:]))])


def _hf(processor, images, **kwargs) -> list[int]:  # type: ignore[no-untyped-def]
    content = [{"type": "image", "image": images[0]}, {"type": "text", "text": "And"}]
    content += [{"type": "image", "image": image} for image in images[1:]]
    out = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=True,
        processor_kwargs=kwargs,
    )  # fmt: skip
    return list(out["input_ids"][0])


def test_language_half_matches_the_full_model(loaded: LoadedModel) -> None:
    assert isinstance(loaded.adapter, SmolVLMAdapter)
    assert ADAPTERS["SmolVLMForConditionalGeneration"] is SmolVLMAdapter
    full = SmolVLMForConditionalGeneration.from_pretrained(loaded.path).eval()
    language = sum(p.numel() for n, p in full.named_parameters() if "text_model" in n or "lm_head" in n)
    assert loaded.model.parameter_count() == language < sum(p.numel() for p in full.parameters())
    ids = torch.tensor([5, 6, 7, 8, 9])
    logits, _ = loaded.model.forward(
        loaded.model.embed(ids)[None], torch.arange(len(ids))[None], torch.ones(1, len(ids)), None
    )
    with torch.no_grad():
        expected = full(input_ids=ids[None]).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=1e-5)


def test_tiled_images_are_written_as_the_processor_writes_them(loaded: LoadedModel) -> None:
    processor = AutoProcessor.from_pretrained(loaded.path)
    expected = _hf(processor, [make_test_image(i, size) for i, size in enumerate(SIZES)])
    refs = [ImageRef("a" * 64, 12, (1, 1, 2)), ImageRef("b" * 64, 20, (1, 2, 2))]
    layout = loaded.adapter.layout(_prompt(loaded, refs), refs)
    assert layout.token_ids == expected
    image_rows = [i for i, t in enumerate(expected) if t == processor.image_token_id]
    assert [row for span in layout.spans for row in span.feature_rows] == image_rows
    assert image_rows[:12] != list(range(image_rows[0], image_rows[0] + 12))  # markers between tiles


def test_a_whole_image_is_the_global_block_alone(loaded: LoadedModel) -> None:
    processor = AutoProcessor.from_pretrained(loaded.path)
    images = [make_test_image(i, size) for i, size in enumerate(SIZES)]
    expected = _hf(processor, images, do_image_splitting=False)
    refs = [ImageRef("a" * 64, 4), ImageRef("b" * 64, 4)]
    layout = loaded.adapter.layout(_prompt(loaded, refs), refs)
    assert layout.token_ids == expected
    assert [span.end - span.start for span in layout.spans] == [6, 6]  # markers + 4 image rows


@pytest.mark.parametrize(("num_tokens", "grid"), [(12, ()), (12, (1, 2, 2)), (20, (2, 2, 2)), (4, (1, 0, 1))])
def test_a_grid_that_does_not_give_the_token_count_is_refused(
    loaded: LoadedModel, num_tokens: int, grid: tuple[int, ...]
) -> None:
    refs = [ImageRef("a" * 64, num_tokens, grid), ImageRef("b" * 64, 4)]
    with pytest.raises(InvalidInput, match="image aaaa"):
        loaded.adapter.layout(_prompt(loaded, refs), refs)
