"""The Qwen2.5-VL vision adapter on the tiny checkpoint: exactly HF's ``get_image_features``,
alone or batched, with windowed attention that changes the features (so it is really exercised);
its pixel limits decide the grid and are part of the fingerprint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from tandem.models.fingerprint import fingerprint
from tandem.testing.checkpoints import make_test_image
from vision_service.adapters import load_adapter
from vision_service.adapters.qwen2_5_vl import Qwen2_5_VLAdapter

SIZES = ((64, 48), (112, 56), (84, 112), (140, 140))  # 1, 2, 4 (ragged) and 9 windows


def test_features_equal_hf_alone_and_batched(checkpoint) -> None:  # type: ignore[no-untyped-def]
    path: Path = checkpoint("qwen2_5_vl")
    adapter = load_adapter(path)
    assert isinstance(adapter, Qwen2_5_VLAdapter)
    images = [make_test_image(i, size) for i, size in enumerate(SIZES)]
    pixels = [adapter.preprocess(image) for image in images]
    batched = adapter.encode(pixels)
    full = Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
    inputs = AutoProcessor.from_pretrained(path).image_processor(images=images, return_tensors="pt")
    assert [p.grid_thw for p in pixels] == [tuple(g) for g in inputs["image_grid_thw"].tolist()]
    with torch.no_grad():
        expected = full.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    for n, (got, want) in enumerate(zip(batched, expected, strict=True)):
        assert torch.equal(got, want), n
        assert torch.equal(adapter.encode([pixels[n]])[0], want), n
    held = sum(p.numel() for p in adapter.module.parameters())
    assert held == sum(p.numel() for p in full.model.visual.parameters())

    full.model.visual.fullatt_block_indexes = list(range(len(full.model.visual.blocks)))
    with torch.no_grad():
        unwindowed = full.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    assert torch.equal(unwindowed[0], expected[0])  # one window = the whole image
    assert all(not torch.allclose(a, b, atol=1e-3) for a, b in zip(unwindowed[1:], expected[1:], strict=True))


def test_pixel_limits_change_the_grid_and_the_fingerprint(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path: Path = checkpoint("qwen2_5_vl")
    smaller = tmp_path / "max-pixels"
    shutil.copytree(path, smaller)
    config = json.loads((smaller / "processor_config.json").read_text())
    config["image_processor"]["size"]["longest_edge"] = 84 * 84  # max_pixels
    (smaller / "processor_config.json").write_text(json.dumps(config))
    image = make_test_image(5, (140, 140))
    grids = [load_adapter(p).preprocess(image).grid_thw for p in (path, smaller)]
    assert grids == [(1, 10, 10), (1, 6, 6)]
    assert fingerprint(path, "m") != fingerprint(smaller, "m")
