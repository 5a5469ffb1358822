"""LLaVA-OneVision's language half on the tiny checkpoint: ``<image>`` expanded to the variant
of the prompt's image count, each taking its own rows of the image's record."""

from __future__ import annotations

import pytest
from transformers import AutoProcessor

from llm_service.adapters import ADAPTERS
from llm_service.adapters.llava_onevision import LlavaOnevisionAdapter
from llm_service.config import LlmConfig
from llm_service.conversation import ChatMessage, ImageRef, TextPart
from llm_service.loader import LoadedModel, load
from llm_service.prompt import PromptBuilder
from llm_service.worker import prompt_keys
from tandem.errors import InvalidInput
from tandem.testing.checkpoints import make_test_image

SIZES = ((112, 56), (140, 140))  # (width, height): 52 and 46 tokens alone, 17 each together
RECORDS = (52 + 17, 46 + 17)  # a record: the alone rows, then the among-others rows


@pytest.fixture(scope="module")
def loaded(checkpoint) -> LoadedModel:  # type: ignore[no-untyped-def]
    return load(LlmConfig(model=str(checkpoint("llava_onevision")), device="cpu"))


def _layout(loaded: LoadedModel, refs: list[ImageRef]):  # type: ignore[no-untyped-def]
    builder = PromptBuilder(loaded.tokenizer, loaded.chat_template, loaded.adapter.add_special_tokens)
    return loaded.adapter.layout(builder.build([ChatMessage("user", (*refs, TextPart("And")))]), refs)


def _hf(loaded: LoadedModel, sizes: tuple[tuple[int, int], ...]) -> list[int]:
    processor = AutoProcessor.from_pretrained(loaded.path)
    content = [{"type": "image", "image": make_test_image(i, size)} for i, size in enumerate(sizes)]
    hf = [{"role": "user", "content": [*content, {"type": "text", "text": "And"}]}]
    out = processor.apply_chat_template(hf, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"][0])


def test_each_variant_is_laid_out_as_the_processor_does(loaded: LoadedModel) -> None:
    assert ADAPTERS["LlavaOnevisionForConditionalGeneration"] is LlavaOnevisionAdapter
    refs = [ImageRef(f"{i:064x}", n) for i, n in enumerate(RECORDS)]
    alone = _layout(loaded, refs[:1])
    assert alone.token_ids == _hf(loaded, SIZES[:1])
    assert [(s.image.num_tokens, s.record_rows) for s in alone.spans] == [(52, slice(0, 52))]
    together = _layout(loaded, refs)
    assert together.token_ids == _hf(loaded, SIZES)
    assert [s.record_rows for s in together.spans] == [slice(52, 69), slice(46, 63)]
    assert together.image_tokens == 2 * 17


def test_the_two_variants_of_an_image_never_share_prompt_keys(
    loaded: LoadedModel,
) -> None:
    ref = ImageRef("a" * 64, RECORDS[0])
    alone, together = _layout(loaded, [ref]), _layout(loaded, [ref, ref])
    rows = {
        name: set(keys[s.start : s.end])
        for name, layout in (("alone", alone), ("together", together))
        for keys in [prompt_keys(layout)]
        for s in layout.spans[:1]
    }
    assert not rows["alone"] & rows["together"]


def test_a_record_too_small_for_both_variants_is_refused(loaded: LoadedModel) -> None:
    with pytest.raises(InvalidInput, match="both ways"):
        _layout(loaded, [ImageRef("a" * 64, 33)])
