"""Gemma 3 (``Gemma3ForConditionalGeneration``): SigLIP tower, average-pooled projector.

Features per image = projector(last_hidden_state): the tower's patch grid is average-pooled to
``mm_tokens_per_image`` tokens (256 on hub checkpoints), RMS-normed and projected to the text
hidden size -- HF ``Gemma3Model.get_image_features``. Images are resized to one fixed size, so
a batch is simply stacked. Pan-and-scan (extra crops per image, each with its own image block in
the prompt) is not supported: a processor that enables it is refused at load.

Checkpoint layouts loaded: ``model.vision_tower.*`` / ``model.multi_modal_projector.*``
(transformers >= 4.52 saves) and ``vision_tower.*`` / ``multi_modal_projector.*`` (the original
google/gemma-3-* layout), with or without the SigLIP ``vision_model`` level.
"""

from __future__ import annotations

from typing import cast

import torch
from PIL import Image
from transformers import AutoModel, Gemma3Config
from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector

from tandem.models.meta import build_empty
from vision_service.adapters.base import Pixels, VisionAdapter
from vision_service.adapters.llava import LlavaAdapter


class Gemma3Vision(torch.nn.Module):
    """The Gemma 3 vision half: tower + pooling projector, returning ``[batch, tokens, hidden]``."""

    def __init__(self, tower: torch.nn.Module, projector: torch.nn.Module):
        super().__init__()
        self.vision_tower = tower
        self.multi_modal_projector = projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_tower(pixel_values=pixel_values, return_dict=True).last_hidden_state
        return self.multi_modal_projector(hidden)


class Gemma3Adapter(VisionAdapter):
    """Gemma 3 checkpoints (SigLIP tower + pooling projector)."""

    architecture = "Gemma3ForConditionalGeneration"

    def build_module(self) -> torch.nn.Module:
        if getattr(self.processor, "do_pan_and_scan", False):
            raise ValueError("Gemma 3 with do_pan_and_scan is not supported; set it to false")
        config = cast(Gemma3Config, self.config)
        module = build_empty(
            lambda: Gemma3Vision(
                AutoModel.from_config(config.vision_config, dtype=self.dtype),
                Gemma3MultiModalProjector(config),
            )
        )
        return self.fill(module, LlavaAdapter._prefixes(module.vision_tower))  # the same layouts

    def preprocess(self, image: Image.Image) -> Pixels:
        return Pixels(self.processor(images=[image], return_tensors="pt")["pixel_values"][0])

    def encode(self, batch: list[Pixels]) -> list[torch.Tensor]:
        return self.forward_stacked(batch)  # one fixed input size: a batch simply stacks
