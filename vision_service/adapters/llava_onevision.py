"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's any resolution, plus a
second way to see an image, used when the prompt holds several.

HF encodes an image one of two ways, by how many images its prompt holds
(``LlavaOnevisionModel.get_image_features``, ``batch_num_images``):

- alone: any resolution as LLaVA-NeXT (base view, tiles from ``image_grid_pinpoints``, padding
  rows removed, one ``image_newline`` per row), except that tile features past
  ``vision_aspect_ratio`` ("anyres_max_N": N tiles' worth) are shrunk bilinearly first;
- with other images: the image padded to a square with the processor's mean colour, resized to
  one tile: its features plus one ``image_newline``.

The two differ in pixels, not only in rows, so neither is derived from the other. The vision
side does not know the prompt, so it encodes both in one forward and stores one record per
image: the alone rows, then the several rows (``tiles**2 + 1``, a constant of the config). The
language side takes the rows of the variant its prompt needs (``llm_service/adapters/
llava_onevision.py``), so a cached embedding can never stand in for the other variant.

Checkpoint layouts: those of LLaVA-NeXT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from PIL import Image
from transformers import AutoModel, LlavaOnevisionConfig

from vision_service.adapters.base import Pixels
from vision_service.adapters.llava_next import LlavaNextAdapter, LlavaNextVision, TiledPixels


@dataclass(frozen=True)
class OnevisionPixels(TiledPixels):
    """``values``: the any-resolution tiles (base view first), then the one square view."""

    def __repr__(self) -> str:
        return f"OnevisionPixels(shape={tuple(self.values.shape)}, image_size={self.image_size})"


class OnevisionVision(LlavaNextVision):
    """``LlavaNextVision`` (OneVision's projector has the same layers) with the ``anyres_max``
    shrink, and the square view's rows."""

    def __init__(self, config: LlavaOnevisionConfig, tower: torch.nn.Module, dtype: torch.dtype):
        super().__init__(cast(Any, config), tower, dtype)  # the same projector and newline
        self.max_tiles = int(str(config.vision_aspect_ratio).removeprefix("anyres_max_"))

    def shrink(self, grid: torch.Tensor) -> torch.Tensor:
        """``[hidden, h, w]`` unpadded tile features, shrunk past ``max_tiles`` tiles' worth."""
        _, height, width = grid.shape
        ratio = math.sqrt(height * width / (self.max_tiles * self.side**2))
        if ratio <= 1.1:
            return grid
        size = [int(height // ratio), int(width // ratio)]
        return torch.nn.functional.interpolate(grid[None], size, mode="bilinear")[0]

    def square(self, view: torch.Tensor) -> torch.Tensor:
        """``[side*side, hidden]`` features of the square view -> its rows plus one newline."""
        return torch.cat((view, self.image_newline.to(view.dtype)[None]))


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision checkpoints: both variants of every image in one record."""

    architecture = "LlavaOnevisionForConditionalGeneration"

    def make_module(self) -> OnevisionVision:
        config = cast(LlavaOnevisionConfig, self.config)
        return OnevisionVision(
            config, AutoModel.from_config(config.vision_config, dtype=self.dtype), self.dtype
        )

    def preprocess(self, image: Image.Image) -> Pixels:
        alone = self.processor(images=[image], return_tensors="pt")
        height, width = (int(v) for v in alone["image_sizes"][0])
        module = cast(OnevisionVision, self.module)
        tiles = alone["pixel_values"][0][: module.num_tiles((height, width))]
        square = self.processor(images=[[image, image]], return_tensors="pt")["pixel_values"][0]
        return OnevisionPixels(torch.cat((tiles, square[:1])), image_size=(height, width))

    def encode(self, batch: list[Pixels]) -> list[torch.Tensor]:
        """All views of the batch in one forward; per image, the alone rows then the several rows."""
        sizes = [self._image_size(p) for p in batch]
        module = cast(OnevisionVision, self.module)
        pixels = torch.cat([p.values for p in batch]).to(self.device, self.dtype)
        with torch.inference_mode():
            features = module(pixels).split([p.values.shape[0] for p in batch])
            rows = [self._rows(module, f, size) for f, size in zip(features, sizes, strict=True)]
        return [r.to("cpu") for r in rows]

    @staticmethod
    def _rows(module: OnevisionVision, views: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        alone = module.pack(views[:-1], size)
        return torch.cat((alone, module.square(views[-1])))
