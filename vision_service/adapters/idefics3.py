"""Idefics3 (``Idefics3ForConditionalGeneration``): SigLIP-style tower, pixel-shuffle connector, tiles.

The image processor (``do_image_splitting``) resizes an image to ``size["longest_edge"]``, rounds
both sides up to multiples of the ``max_image_size`` frame, cuts that into rows x cols frames and
appends the whole image resized to one frame; an image that fits one frame stays whole. Every
frame goes through the tower (all frames are full-size, so no patch is masked) and the connector
(pixel shuffle: ``scale_factor`` x ``scale_factor`` neighbouring patches become one token, then a
linear map into the text hidden size) -- HF ``Idefics3Model.get_image_features``. The image's
features are its frames' tokens in order (tiles row by row, global image last) and its grid is
``(1, rows, cols)``, or none for a whole image: the language side writes the matching
``<row_r_col_c>`` markers. Processor settings (tiling, sizes) sit in ``preprocessor_config.json``,
which the fingerprint hashes. SmolVLM (``smolvlm.py``) differs only in class names.

Checkpoint layout: ``model.vision_model.*`` / ``model.connector.*``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from PIL import Image
from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector, Idefics3VisionTransformer

from tandem.models.meta import build_empty
from vision_service.adapters.base import Pixels, VisionAdapter


class Idefics3Vision(torch.nn.Module):
    """Tower + connector: ``[frames, C, S, S]`` -> ``[frames, image_seq_len, hidden]``."""

    def __init__(self, tower: torch.nn.Module, connector: torch.nn.Module):
        super().__init__()
        self.vision_model = tower
        self.connector = connector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
        return self.connector(hidden)


class Idefics3Adapter(VisionAdapter):
    """Idefics3 checkpoints (tower + pixel-shuffle connector, tiled images)."""

    architecture = "Idefics3ForConditionalGeneration"
    tower_class: ClassVar[Any] = Idefics3VisionTransformer
    connector_class: ClassVar[Any] = Idefics3Connector

    def build_module(self) -> torch.nn.Module:
        module = build_empty(
            lambda: Idefics3Vision(
                self.tower_class._from_config(self.config.vision_config, dtype=self.dtype),
                self.connector_class(self.config),
            )
        )
        prefixes = {"model.vision_model.": "vision_model.", "model.connector.": "connector."}
        return self.fill(module, prefixes)

    def preprocess(self, image: Image.Image) -> Pixels:
        out = self.processor(images=[image], return_tensors="pt", return_row_col_info=True)
        rows, cols = int(out["rows"][0][0]), int(out["cols"][0][0])
        frames = out["pixel_values"][0][: rows * cols + 1]
        return Pixels(frames, (1, rows, cols) if rows else None)

    def encode(self, batch: list[Pixels]) -> list[torch.Tensor]:
        """All frames of the batch in one forward, then each image's frames as its rows."""
        pixels = torch.cat([p.values for p in batch]).to(self.device, self.dtype)
        with torch.inference_mode():
            features = self.module(pixels).split([p.values.shape[0] for p in batch])
        return [f.reshape(-1, f.shape[-1]).to("cpu") for f in features]
