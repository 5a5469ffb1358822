"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): native-resolution ViT with a 2x2 patch merger.

The image processor resizes each image to a multiple of patch*merge pixels (within the
checkpoint's min/max pixels) and flattens it into patches with a ``grid_thw`` of (1, h, w) in
patches. Several images go through one forward as concatenated patches with their grids;
image i yields ``t*h*w / merge**2`` features -- HF ``Qwen2VLModel.get_image_features``.

Checkpoint layouts loaded: ``visual.*`` (Qwen/Qwen2-VL-* hub checkpoints and transformers 5
saves) and ``model.visual.*`` (saved by transformers 4.52-4.x).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from PIL import Image
from transformers import PreTrainedModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from tandem.models.meta import build_empty
from vision_service.adapters.base import Pixels, VisionAdapter


class Qwen2VLAdapter(VisionAdapter):
    """Qwen2-VL checkpoints (vision transformer + patch merger, output in the text hidden size)."""

    architecture = "Qwen2VLForConditionalGeneration"
    # The HF vision module (tower + merger) whose forward is ``get_image_features``'s.
    tower: ClassVar[type[PreTrainedModel]] = Qwen2VisionTransformerPretrainedModel

    def build_module(self) -> torch.nn.Module:
        vision_config = self.config.vision_config
        module = build_empty(lambda: self.tower._from_config(vision_config, dtype=self.dtype))
        return self.fill(module, {"model.visual.": "", "visual.": ""})

    @property
    def merge_size(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    def preprocess(self, image: Image.Image) -> Pixels:
        out = self.processor(images=[image], return_tensors="pt")
        t, h, w = (int(v) for v in out["image_grid_thw"][0])
        return Pixels(out["pixel_values"], (t, h, w))

    def encode(self, batch: list[Pixels]) -> list[torch.Tensor]:
        grids = [p.grid_thw for p in batch if p.grid_thw is not None]
        if len(grids) != len(batch):
            raise ValueError("Qwen2-VL pixels need a grid_thw")
        pixels = torch.cat([p.values for p in batch]).to(self.device, self.dtype)
        grid = torch.tensor(grids, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.module(pixels, grid_thw=grid)
        merged = out.pooler_output if hasattr(out, "pooler_output") else out
        sizes = [math.prod(g) // self.merge_size**2 for g in grids]
        return list(merged.to("cpu").split(sizes))

    def dummy_image(self) -> Image.Image:
        side = 2 * int(self.config.vision_config.patch_size) * self.merge_size
        return Image.new("RGB", (side, side), (127, 127, 127))
