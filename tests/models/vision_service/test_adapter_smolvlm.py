"""The SmolVLM / Idefics3 vision adapters on the tiny checkpoints: exactly HF's
``get_image_features``, alone or batched, with the processor's tile grid; the tiling settings
and the tower and connector weights are part of the fingerprint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from tandem.models.fingerprint import VISION_WEIGHT_PREFIXES, fingerprint
from tandem.testing.checkpoints import make_test_image
from vision_service.adapters import load_adapter
from vision_service.adapters.idefics3 import Idefics3Adapter
from vision_service.adapters.smolvlm import SmolVLMAdapter

SIZES = ((112, 56), (84, 112), (140, 140))  # 1x2, 2x2, 2x2 tiles + the global image
GRIDS = [(1, 1, 2), (1, 2, 2), (1, 2, 2)]


@pytest.mark.parametrize(("kind", "cls"), [("smolvlm", SmolVLMAdapter), ("idefics3", Idefics3Adapter)])
def test_features_equal_hf_alone_and_batched(checkpoint, kind: str, cls: type) -> None:  # type: ignore[no-untyped-def]
    path: Path = checkpoint(kind)
    adapter = load_adapter(path)
    assert type(adapter) is cls
    images = [make_test_image(i, size) for i, size in enumerate(SIZES)]
    pixels = [adapter.preprocess(image) for image in images]
    assert [p.grid_thw for p in pixels] == GRIDS
    full = AutoModelForImageTextToText.from_pretrained(path).eval()
    inputs = AutoProcessor.from_pretrained(path).image_processor(
        images=[[image] for image in images], return_tensors="pt"
    )
    with torch.no_grad():
        expected = full.get_image_features(
            inputs["pixel_values"], inputs["pixel_attention_mask"]
        ).pooler_output
    batched = adapter.encode(pixels)
    for n, (got, want) in enumerate(zip(batched, expected, strict=True)):
        assert got.shape == (4 * (GRIDS[n][1] * GRIDS[n][2] + 1), full.config.text_config.hidden_size)
        assert torch.equal(got, want), n
        assert torch.equal(adapter.encode([pixels[n]])[0], want), n
    vision = sum(p.numel() for n, p in full.named_parameters() if n.startswith(VISION_WEIGHT_PREFIXES))
    assert sum(p.numel() for p in adapter.module.parameters()) == vision > 0


def test_an_image_left_whole_has_one_frame_and_no_grid(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    whole = shutil.copytree(checkpoint("smolvlm"), tmp_path / "whole")
    config = json.loads((whole / "processor_config.json").read_text())
    config["image_processor"]["do_image_splitting"] = False
    (whole / "processor_config.json").write_text(json.dumps(config))
    adapter = load_adapter(whole)
    pixels = adapter.preprocess(make_test_image(1, (112, 56)))
    assert pixels.values.shape[0] == 1 and pixels.grid_thw is None
    assert adapter.encode([pixels])[0].shape[0] == 4


def test_tiling_settings_and_vision_weights_are_in_the_fingerprint(checkpoint, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path: Path = checkpoint("smolvlm")
    prints = {fingerprint(path, "m")}
    for key, value in (("do_image_splitting", False), ("size", {"longest_edge": 96})):
        changed = shutil.copytree(path, tmp_path / key)
        config = json.loads((changed / "processor_config.json").read_text())
        config["image_processor"][key] = value
        (changed / "processor_config.json").write_text(json.dumps(config))
        prints.add(fingerprint(changed, "m"))
    for name in ("model.connector.modality_projection.proj.weight", "model.vision_model.post_layernorm.bias"):
        changed = shutil.copytree(path, tmp_path / name)
        tensors = load_file(changed / "model.safetensors")
        tensors[name] = tensors[name] + 1
        save_file(tensors, changed / "model.safetensors", metadata={"format": "pt"})
        prints.add(fingerprint(changed, "m"))
    assert len(prints) == 5
