"""InternVL (``InternVLForConditionalGeneration``): InternViT tower, pixel unshuffle, MLP projector, tiles.

The image processor (``GotOcr2ImageProcessor`` with ``crop_to_patches``, as ``InternVLProcessor``
calls it) cuts an image into the tile grid closest to its aspect ratio within
``min_patches..max_patches``, plus a thumbnail tile when there is more than one. Per tile, as HF
``InternVLModel.get_image_features``: the tower's ``vision_feature_layer`` (CLS dropped under the
"default" strategy), laid out as its patch grid, pixel-unshuffled (``downsample_ratio`` 0.5: each
2x2 block of patches becomes one token of 4x the width), then layer norm + MLP into the text
hidden size. An image's features are its tiles' tokens in order, ``image_seq_length`` per tile;
tiling settings sit in ``preprocessor_config.json``, which the fingerprint hashes.

Checkpoint layouts: ``model.vision_tower.*`` / ``model.multi_modal_projector.*`` (transformers
>= 4.52 saves, the ``-hf`` hub checkpoints) and ``vision_tower.*`` / ``multi_modal_projector.*``.
"""

from __future__ import annotations

from typing import cast

import torch
from PIL import Image
from transformers import AutoModel, InternVLConfig
from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

from tandem.models.meta import build_empty
from vision_service.adapters.base import Pixels, VisionAdapter


def pixel_unshuffle(grid: torch.Tensor, ratio: float) -> torch.Tensor:
    """``[B, side, side, C]`` -> ``[B, side*ratio, side*ratio, C/ratio**2]`` in HF's element order
    (``InternVLModel.pixel_shuffle``: the second axis folded first, then the first)."""
    batch, first, second, channels = grid.shape
    folded = grid.view(batch, first, int(second * ratio), int(channels / ratio))
    folded = folded.permute(0, 2, 1, 3).contiguous()
    folded = folded.view(batch, int(second * ratio), int(first * ratio), int(channels / ratio**2))
    return folded.permute(0, 2, 1, 3).contiguous()


class InternVLVision(torch.nn.Module):
    """Tower + unshuffle + projector: ``[tiles, C, S, S]`` -> ``[tiles, image_seq_length, hidden]``."""

    def __init__(self, config: InternVLConfig, tower: torch.nn.Module):
        super().__init__()
        self.vision_tower = tower
        self.multi_modal_projector = InternVLMultiModalProjector(config)
        self.layer = int(cast(int, config.vision_feature_layer))
        self.drop_cls = config.vision_feature_select_strategy == "default"
        self.ratio = float(config.downsample_ratio)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(
            pixel_values=pixel_values, output_hidden_states=self.layer != -1, return_dict=True
        )
        features = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        features = features[:, 1:] if self.drop_cls else features
        side = int(features.shape[1] ** 0.5)
        grid = pixel_unshuffle(features.reshape(features.shape[0], side, side, -1), self.ratio)
        return self.multi_modal_projector(grid.reshape(grid.shape[0], -1, grid.shape[-1]))


class InternVLAdapter(VisionAdapter):
    """InternVL 2.5 / 3 checkpoints in transformers' format (the ``-hf`` ones)."""

    architecture = "InternVLForConditionalGeneration"

    def build_module(self) -> torch.nn.Module:
        if not isinstance(self.config.vision_feature_layer, int):
            raise ValueError("InternVL with several vision_feature_layer values is not supported")
        config = cast(InternVLConfig, self.config)
        module = build_empty(
            lambda: InternVLVision(config, AutoModel.from_config(config.vision_config, dtype=self.dtype))
        )
        prefixes = {
            "model.vision_tower.": "vision_tower.",
            "vision_tower.": "vision_tower.",
            "model.multi_modal_projector.": "multi_modal_projector.",
            "multi_modal_projector.": "multi_modal_projector.",
        }
        return self.fill(module, prefixes)

    def dummy_image(self) -> Image.Image:
        side = int(self.config.vision_config.image_size[0])
        return Image.new("RGB", (side, side), (127, 127, 127))

    def preprocess(self, image: Image.Image) -> Pixels:
        out = self.processor(images=[image], crop_to_patches=True, return_tensors="pt")
        return Pixels(out["pixel_values"][: int(out["num_patches"][0])])

    def encode(self, batch: list[Pixels]) -> list[torch.Tensor]:
        """All tiles of the batch in one forward, then each image's tiles as its rows."""
        pixels = torch.cat([p.values for p in batch]).to(self.device, self.dtype)
        with torch.inference_mode():
            features = self.module(pixels).split([p.values.shape[0] for p in batch])
        return [f.reshape(-1, f.shape[-1]).to("cpu") for f in features]
