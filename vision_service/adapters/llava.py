"""LLaVA (``LlavaForConditionalGeneration``): vision tower, feature-layer select, MLP projector.

Features per image = projector(hidden_states[vision_feature_layer]) with the CLS token dropped
under the "default" strategy -- HF ``LlavaModel.get_image_features``. Images are preprocessed
to one fixed size, so a batch is simply stacked.

Checkpoint layouts loaded (all map onto ``vision_tower.`` / ``multi_modal_projector.``):
``vision_tower.vision_model.*`` (llava-hf hub checkpoints), ``model.vision_tower.*`` (saved by
transformers >= 4.52) and ``vision_tower.*`` (transformers 5 saves, where CLIP/SigLIP towers
no longer have the ``vision_model`` level).
"""

from __future__ import annotations

from typing import cast

import torch
from PIL import Image
from transformers import AutoModel, LlavaConfig
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from tandem.models.meta import build_empty
from vision_service.adapters.base import Pixels, VisionAdapter


class LlavaVision(torch.nn.Module):
    """The LLaVA vision half: tower + projector, returning ``[batch, tokens, hidden]``."""

    def __init__(
        self, tower: torch.nn.Module, projector: torch.nn.Module, layer: int | list[int], strategy: str
    ):
        super().__init__()
        self.vision_tower = tower
        self.multi_modal_projector = projector
        self.layers = [layer] if isinstance(layer, int) else list(layer)
        self.drop_cls = strategy == "default"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        selected = [hidden[i][:, 1:] if self.drop_cls else hidden[i] for i in self.layers]
        return self.multi_modal_projector(torch.cat(selected, dim=-1))


class LlavaAdapter(VisionAdapter):
    """LLaVA-1.5 style checkpoints (CLIP or SigLIP tower + MLP projector)."""

    architecture = "LlavaForConditionalGeneration"

    def build_module(self) -> torch.nn.Module:
        strategy = self.config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise ValueError(f"unsupported vision_feature_select_strategy {strategy!r}")
        module = build_empty(self.make_module)
        return self.fill(module, self._prefixes(module.vision_tower))

    def make_module(self) -> LlavaVision:
        """The empty vision half (called on the meta device; subclasses add their own parts)."""
        config = cast(LlavaConfig, self.config)
        return LlavaVision(
            AutoModel.from_config(config.vision_config, dtype=self.dtype),
            LlavaMultiModalProjector(config),
            config.vision_feature_layer,
            config.vision_feature_select_strategy,
        )

    @staticmethod
    def _prefixes(tower: torch.nn.Module) -> dict[str, str]:
        """Checkpoint prefix -> module prefix, for every layout in the module docstring."""
        inner = "vision_model." if any(k.startswith("vision_model.") for k in tower.state_dict()) else ""
        target = "vision_tower." + inner
        return {
            "model.vision_tower.vision_model.": target,
            "vision_tower.vision_model.": target,
            "model.vision_tower.": target,
            "vision_tower.": target,
            "model.multi_modal_projector.": "multi_modal_projector.",
            "multi_modal_projector.": "multi_modal_projector.",
        }

    def preprocess(self, image: Image.Image) -> Pixels:
        values = self.processor(images=[image], return_tensors="pt")["pixel_values"]
        return Pixels(values[0])

    def encode(self, batch: list[Pixels]) -> list[torch.Tensor]:
        shapes = {p.values.shape for p in batch}
        if len(shapes) > 1:  # a processor that keeps sizes: one forward per image
            return [self.encode([p])[0] for p in batch]
        return self.forward_stacked(batch)
