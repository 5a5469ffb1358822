"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): LLaVA's tower and projector, any resolution.

The image processor resizes each image into the best of ``image_grid_pinpoints`` (a few tile
multiples), cuts it into tiles of the tower's input size and puts one tile-sized view of the
whole image first. Every tile goes through the LLaVA tower + projector (``LlavaVision``); then,
as HF ``LlavaNextModel.pack_image_features`` does, the features of one image are the base view's,
followed by the tiles' features laid out on one grid, with the rows and columns that only cover
padding removed (``unpad_image``) and ``image_newline`` appended at the end of every row. The
token count therefore depends on the image size; it is what ``LlavaNextProcessor`` expands
``<image>`` to for that size, and the record carries it to the language side.

Checkpoint layouts: those of LLaVA, plus ``image_newline`` (hub, transformers 5 saves) or
``model.image_newline`` (transformers 4.52-4.x saves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from PIL import Image
from transformers import AutoModel, LlavaNextConfig
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextMultiModalProjector,
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from vision_service.adapters.base import Pixels
from vision_service.adapters.llava import LlavaAdapter, LlavaVision


@dataclass(frozen=True)
class TiledPixels(Pixels):
    """One image as ``values`` [tiles, C, H, W] (base view first) and its original (height, width)."""

    image_size: tuple[int, int] = (0, 0)

    def __repr__(self) -> str:
        return f"TiledPixels(shape={tuple(self.values.shape)}, image_size={self.image_size})"


class LlavaNextVision(LlavaVision):
    """``LlavaVision`` plus ``image_newline`` and the any-resolution packing of one image's tiles."""

    def __init__(self, config: LlavaNextConfig, tower: torch.nn.Module, dtype: torch.dtype):
        super().__init__(
            tower,
            LlavaNextMultiModalProjector(config),
            config.vision_feature_layer,
            config.vision_feature_select_strategy,
        )
        hidden, vision = int(config.get_text_config().hidden_size), cast(Any, config.vision_config)
        self.image_newline = torch.nn.Parameter(torch.empty(hidden, dtype=dtype))
        self.pinpoints = [list(p) for p in config.image_grid_pinpoints or []]
        self.tile = int(vision.image_size)
        self.side = self.tile // int(vision.patch_size)

    def num_tiles(self, image_size: tuple[int, int]) -> int:
        """Tiles the processor makes for an image of (height, width), base view included."""
        return int(image_size_to_num_patches(list(image_size), self.pinpoints, self.tile))

    def shrink(self, grid: torch.Tensor) -> torch.Tensor:
        """The unpadded tile features ``[hidden, h, w]`` before the newlines go in (as they are)."""
        return grid

    def pack(self, tiles: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """``[tiles, side*side, hidden]`` projected features -> ``[num_tokens, hidden]`` for one image."""
        base, rest = tiles[0], tiles[1:]
        newline = self.image_newline.to(tiles.dtype)
        if rest.shape[0] == 0:
            return torch.cat((base, newline[None]))
        rows, cols = get_anyres_image_grid_shape(list(image_size), self.pinpoints, self.tile)
        grid = rest.view(rows, cols, self.side, self.side, -1).permute(4, 0, 2, 1, 3)
        grid = unpad_image(grid.reshape(grid.shape[0], rows * self.side, cols * self.side), list(image_size))
        grid = self.shrink(grid)
        ends = newline[:, None, None].expand(-1, grid.shape[1], 1)
        return torch.cat((base, torch.cat((grid, ends), dim=-1).flatten(1, 2).T))


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT / LLaVA-v1.6 checkpoints (any-resolution tiles, ``image_newline`` per row)."""

    architecture = "LlavaNextForConditionalGeneration"

    def make_module(self) -> LlavaNextVision:
        config = cast(LlavaNextConfig, self.config)
        return LlavaNextVision(
            config, AutoModel.from_config(config.vision_config, dtype=self.dtype), self.dtype
        )

    @staticmethod
    def _prefixes(tower: torch.nn.Module) -> dict[str, str]:
        newline = {"model.image_newline": "image_newline", "image_newline": "image_newline"}
        return LlavaAdapter._prefixes(tower) | newline

    def preprocess(self, image: Image.Image) -> Pixels:
        out = self.processor(images=[image], return_tensors="pt")
        height, width = (int(v) for v in out["image_sizes"][0])
        module = cast(LlavaNextVision, self.module)
        tiles = out["pixel_values"][0][: module.num_tiles((height, width))]
        return TiledPixels(tiles, image_size=(height, width))

    def encode(self, batch: list[Pixels]) -> list[torch.Tensor]:
        """All tiles of the batch in one forward, then each image's tiles packed on their own."""
        sizes = [self._image_size(p) for p in batch]
        module = cast(LlavaNextVision, self.module)
        pixels = torch.cat([p.values for p in batch]).to(self.device, self.dtype)
        with torch.inference_mode():
            features = module(pixels).split([p.values.shape[0] for p in batch])
            packed = [module.pack(f, size) for f, size in zip(features, sizes, strict=True)]
        return [f.to("cpu") for f in packed]

    @staticmethod
    def _image_size(pixels: Pixels) -> tuple[int, int]:
        if not isinstance(pixels, TiledPixels) or min(pixels.image_size) < 1:
            raise ValueError("LLaVA-NeXT pixels need the image's original size")
        return pixels.image_size
