"""LLaVA-NeXT's language half on the tiny checkpoint: weights, and ``<image>`` expanded per image size."""

from __future__ import annotations

import torch
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

from llm_service.adapters import ADAPTERS
from llm_service.adapters.llava_next import LlavaNextAdapter
from llm_service.config import LlmConfig
from llm_service.conversation import ChatMessage, ImageRef, TextPart
from llm_service.loader import load
from llm_service.prompt import PromptBuilder
from tandem.testing.checkpoints import make_test_image

SIZES = ((112, 56), (64, 48))  # (width, height): 52 and 70 tokens


def test_language_half_matches_the_full_model(checkpoint) -> None:
    path = checkpoint("llava_next")
    loaded = load(LlmConfig(model=str(path), device="cpu"))
    assert isinstance(loaded.adapter, LlavaNextAdapter)
    assert ADAPTERS["LlavaNextForConditionalGeneration"] is LlavaNextAdapter
    full = LlavaNextForConditionalGeneration.from_pretrained(path).eval()
    language = sum(p.numel() for n, p in full.named_parameters() if "language_model" in n or "lm_head" in n)
    assert loaded.model.parameter_count() == language < sum(p.numel() for p in full.parameters())
    ids = torch.tensor([5, 6, 7, 8, 9])
    logits, _ = loaded.model.forward(
        loaded.model.embed(ids)[None], torch.arange(len(ids))[None], torch.ones(1, len(ids)), None
    )
    with torch.no_grad():
        expected = full(input_ids=ids[None]).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=1e-5)
    assert loaded.adapter.dummy_image().num_tokens == 4 * 4 + 1  # the base view and one newline


def test_each_image_expands_to_the_processor_count_for_its_size(checkpoint) -> None:
    path = checkpoint("llava_next")
    loaded = load(LlmConfig(model=str(path), device="cpu"))
    processor = AutoProcessor.from_pretrained(path)
    images = [make_test_image(i, size) for i, size in enumerate(SIZES)]
    token = processor.image_token_id
    counts = [
        int((processor(images=[image], text="<image>", return_tensors="pt")["input_ids"] == token).sum())
        for image in images
    ]
    assert counts == [52, 70]
    content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": "And"}]
    hf = [{"role": "user", "content": content}]
    expected = processor.apply_chat_template(hf, add_generation_prompt=True, tokenize=True, return_dict=True)
    builder = PromptBuilder(loaded.tokenizer, loaded.chat_template, loaded.adapter.add_special_tokens)
    refs = [ImageRef(f"{i:064x}", n) for i, n in enumerate(counts)]
    ours = [ChatMessage("user", (refs[0], refs[1], TextPart("And")))]
    layout = loaded.adapter.layout(builder.build(ours), refs)
    assert layout.token_ids == list(expected["input_ids"][0])
    assert [span.end - span.start for span in layout.spans] == counts
