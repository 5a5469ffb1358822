"""The Qwen3-VL vision adapter on the tiny checkpoint: exactly HF's ``get_image_features`` --
the merged features and every deepstack layer's -- alone or batched, and the records the service
makes of them (version 2, named ``"deepstack"``) decode back to the same tensors."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

from tandem.embeddings import record
from tandem.embeddings.cache import Embedding, decode_inline
from tandem.testing.checkpoints import make_test_image
from vision_service.adapters import load_adapter
from vision_service.adapters.qwen3_vl import Qwen3VLAdapter

SIZES = ((64, 64), (112, 56), (84, 112), (140, 140))  # grids 1x4x4, 1x4x8, 1x8x6, 1x8x8 (patch 16)


def test_features_and_deepstack_equal_hf_alone_and_batched(checkpoint) -> None:  # type: ignore[no-untyped-def]
    path: Path = checkpoint("qwen3_vl")
    adapter = load_adapter(path)
    assert isinstance(adapter, Qwen3VLAdapter) and adapter.extras == ("deepstack",)
    images = [make_test_image(i, size) for i, size in enumerate(SIZES)]
    pixels = [adapter.preprocess(image) for image in images]
    batched = adapter.encode_features(pixels)
    full = Qwen3VLForConditionalGeneration.from_pretrained(path).eval()
    inputs = AutoProcessor.from_pretrained(path).image_processor(images=images, return_tensors="pt")
    assert [p.grid_thw for p in pixels] == [tuple(g) for g in inputs["image_grid_thw"].tolist()]
    with torch.no_grad():
        out = full.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    assert len(out.deepstack_features) == 2
    for n, got in enumerate(batched):
        want = torch.stack([layer[n] for layer in out.deepstack_features])
        assert torch.equal(got.features, out.pooler_output[n]), n
        assert torch.equal(got.extras["deepstack"], want), n
        (alone,) = adapter.encode_features([pixels[n]])
        assert torch.equal(alone.features, got.features) and torch.equal(alone.extras["deepstack"], want), n
        assert not torch.equal(want[0], want[1])  # two different layers' features
    assert torch.equal(adapter.encode(pixels[:1])[0], batched[0].features)
    held = sum(p.numel() for p in adapter.module.parameters())
    assert held == sum(p.numel() for p in full.model.visual.parameters())


def test_the_record_of_an_image_carries_its_deepstack(checkpoint) -> None:  # type: ignore[no-untyped-def]
    adapter = load_adapter(checkpoint("qwen3_vl"))
    pixels = adapter.preprocess(make_test_image(3, (112, 56)))
    (out,) = adapter.encode_features([pixels])
    header, raw = record.make_header(
        fingerprint="f" * 32, image_id="ab" * 32, tensor=out.features, grid_thw=list(pixels.grid_thw or ()),
        extras=out.extras,
    )  # fmt: skip
    assert header.format_version == record.EXTRAS_VERSION
    value = record.encode(header, raw)
    back = decode_inline(value, record.Expected("f" * 32, adapter.hidden_size, "ab" * 32, 8, adapter.extras))
    assert torch.equal(back.features, out.features)
    assert torch.equal(back.extras["deepstack"], out.extras["deepstack"])
    assert Embedding(header, out.features, out.extras).to_record() == value
