"""Qwen2-VL (Qwen2VLForConditionalGeneration): a Qwen2 decoder with multimodal RoPE (M-RoPE).

An image renders as ``<|vision_start|><|image_pad|><|vision_end|>``; ``<|image_pad|>`` expands to
``t*h*w / merge**2`` rows for the image's patch grid (t, h, w). Positions have three rows
(temporal, height, width): text advances all three together, an image's rows take its merged
grid coordinates offset by the running position, and the text after it resumes at
``offset + max(h, w) / merge`` -- the rule of transformers' ``Qwen2VLModel.get_rope_index``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from llm_service.adapters.base import DUMMY_IMAGE_ID, Adapter, ImageSpan, PromptLayout
from llm_service.conversation import ImageRef
from tandem.errors import InvalidInput


class Qwen2VLAdapter(Adapter):
    architectures = ("Qwen2VLForConditionalGeneration",)
    position_dims = 3
    # transformers >= 4.52 layout first, then the original Qwen2-VL layout (decoder at `model.`).
    weight_prefixes: ClassVar[dict[str, str]] = {
        "model.language_model.": "model.",
        "model.embed_tokens.": "model.embed_tokens.",
        "model.layers.": "model.layers.",
        "model.norm.": "model.norm.",
        "lm_head.": "lm_head.",
    }

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    @property
    def merge(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    def check_image(self, span: ImageSpan) -> None:
        grid, name = span.grid_thw, span.image.image_id[:12]
        if len(grid) != 3 or min(grid) < 1:
            raise InvalidInput(f"image {name} needs a (t, h, w) patch grid, got {list(grid)}")
        t, h, w = grid
        if h % self.merge or w % self.merge or t * h * w // self.merge**2 != span.image.num_tokens:
            raise InvalidInput(
                f"image {name}: grid {list(grid)} does not give num_tokens {span.image.num_tokens} "
                f"(merge size {self.merge})"
            )

    def positions(self, layout: PromptLayout) -> tuple[torch.Tensor, int]:
        pieces: list[torch.Tensor] = []
        current = cursor = 0
        for span in layout.spans:
            text = span.start - cursor
            pieces.append(torch.arange(text).expand(3, -1) + current)
            current += text
            pieces.append(self._grid_positions(span.grid_thw) + current)
            current += max(span.grid_thw[1], span.grid_thw[2]) // self.merge
            cursor = span.end
        pieces.append(torch.arange(len(layout.token_ids) - cursor).expand(3, -1) + current)
        positions = torch.cat(pieces, dim=1).long()
        return positions, int(positions.max()) + 1 if positions.numel() else 0

    def _grid_positions(self, grid: tuple[int, ...]) -> torch.Tensor:
        t, h, w = grid[0], grid[1] // self.merge, grid[2] // self.merge
        axes = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
        return torch.stack(axes).reshape(3, -1)

    def dummy_image(self) -> ImageRef:
        side = 2 * self.merge
        return ImageRef(DUMMY_IMAGE_ID, math.prod((1, side, side)) // self.merge**2, (1, side, side))
