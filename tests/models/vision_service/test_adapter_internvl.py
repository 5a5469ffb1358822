"""The InternVL vision adapter on the tiny checkpoint: exactly HF's ``get_image_features`` per
image, alone or batched, with the processor's tiles; the tiling settings are part of the
fingerprint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoProcessor, InternVLForConditionalGeneration

from tandem.models.fingerprint import VISION_WEIGHT_PREFIXES, fingerprint
from tandem.testing.checkpoints import make_test_image
from vision_service.adapters import load_adapter
from vision_service.adapters.internvl import InternVLAdapter

SIZES = ((112, 56), (84, 112), (140, 140))
TILES = [3, 7, 5]  # the grid closest to the aspect ratio (2, 6, 4 tiles) + a thumbnail


def test_features_equal_hf_alone_and_batched(checkpoint) -> None:  # type: ignore[no-untyped-def]
    path: Path = checkpoint("internvl")
    adapter = load_adapter(path)
    assert isinstance(adapter, InternVLAdapter)
    images = [make_test_image(i, size) for i, size in enumerate(SIZES)]
    pixels = [adapter.preprocess(image) for image in images]
    assert [p.values.shape[0] for p in pixels] == TILES
    full = InternVLForConditionalGeneration.from_pretrained(path).eval()
    inputs = AutoProcessor.from_pretrained(path).image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        tiles = full.get_image_features(inputs["pixel_values"]).pooler_output
    expected = [f.reshape(-1, f.shape[-1]) for f in tiles.split(inputs["num_patches"].tolist())]
    for n, (got, want) in enumerate(zip(adapter.encode(pixels), expected, strict=True)):
        assert got.shape[0] == 4 * TILES[n]
        assert torch.equal(got, want), n
        assert torch.equal(adapter.encode([pixels[n]])[0], want), n
    vision = sum(p.numel() for n, p in full.named_parameters() if n.startswith(VISION_WEIGHT_PREFIXES))
    assert sum(p.numel() for p in adapter.module.parameters()) == vision > 0


def test_tiling_settings_change_the_tiles_and_the_fingerprint(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path: Path = checkpoint("internvl")
    fewer = shutil.copytree(path, tmp_path / "fewer")
    config = json.loads((fewer / "processor_config.json").read_text())
    config["image_processor"]["max_patches"] = 2
    (fewer / "processor_config.json").write_text(json.dumps(config))
    image = make_test_image(2, (84, 112))
    assert [load_adapter(p).preprocess(image).values.shape[0] for p in (path, fewer)] == [7, 3]
    assert fingerprint(path, "m") != fingerprint(fewer, "m")
