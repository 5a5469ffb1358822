"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): Qwen2-VL's patch grids plus deepstack features.

Preprocessing is Qwen2-VL's (the checkpoint's ``Qwen2VLImageProcessor``: patch 16, merge 2, its
min/max pixels in the processor config that the fingerprint hashes), and image i costs
``t*h*w / merge**2`` tokens. The tower (``Qwen3VLVisionModel``) adds a learned position grid,
interpolated to each image's grid, and, besides the final merger's features (``pooler_output``,
which replace the ``<|image_pad|>`` rows), merges the hidden states of the blocks listed in
``deepstack_visual_indexes`` with one more merger each. Those K feature sets are the record's
extra tensor ``"deepstack"`` [K, num_tokens, text hidden]: the language side adds set k to the
output of decoder layer k at the image's rows (``llm_service.adapters.qwen3_vl``). This is what
``Qwen3VLModel.get_image_features`` returns, split per image; several images in one forward stay
apart (attention never crosses an image's patches).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from transformers import PreTrainedModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

from vision_service.adapters.base import ImageFeatures, Pixels
from vision_service.adapters.qwen2_vl import Qwen2VLAdapter

DEEPSTACK = "deepstack"


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL checkpoints: the merged features and, per image, the deepstack features."""

    architecture = "Qwen3VLForConditionalGeneration"
    tower: ClassVar[type[PreTrainedModel]] = Qwen3VLVisionModel
    extras: ClassVar[tuple[str, ...]] = (DEEPSTACK,)

    def encode(self, batch: list[Pixels]) -> list[torch.Tensor]:
        return [out.features for out in self.encode_features(batch)]

    def encode_features(self, batch: list[Pixels]) -> list[ImageFeatures]:
        grids = [p.grid_thw for p in batch if p.grid_thw is not None]
        if len(grids) != len(batch):
            raise ValueError("Qwen3-VL pixels need a grid_thw")
        pixels = torch.cat([p.values for p in batch]).to(self.device, self.dtype)
        grid = torch.tensor(grids, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.module(pixels, grid_thw=grid)
        sizes = [math.prod(g) // self.merge_size**2 for g in grids]
        merged = out.pooler_output.to("cpu").split(sizes)
        deepstack = torch.stack(list(out.deepstack_features)).to("cpu").split(sizes, dim=1)
        return [
            ImageFeatures(features, {DEEPSTACK: layers.contiguous()})
            for features, layers in zip(merged, deepstack, strict=True)
        ]
