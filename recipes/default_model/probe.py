"""Auxiliary vision loss for training: linear per-patch probes on the image tokens.

Learning to see from a language loss alone is slow: a tiny LLaVA first fits the answer templates,
then sits on a long plateau guessing shapes and colours. The probes read the projector's output
(the image tokens the language model receives) and train each patch to tell its shape (or
background), its colour and its place (top/bottom, left/right), so the image tokens carry those
features, linearly, from the start. The probes have their own class vectors, deliberately not
the word embeddings: image tokens that looked like the words "square" or "red" would look like
the question's own words too, and the language model, looking for "the square", would find the
question instead of the picture. The probes' parameters are not part of the saved checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from recipes.default_model.scenes import COLOURS, GRID, IGNORE_LABEL, SHAPES

WEIGHTS = {"shape": 1.0, "colour": 0.2, "vertical": 0.25, "horizontal": 0.25}
CLASSES = {"shape": 1 + len(SHAPES), "colour": 1 + len(COLOURS), "vertical": 2, "horizontal": 2}


class VisionProbe(nn.Module):
    """Linear probes on the projector's output, captured by a forward hook."""

    def __init__(self, model: Any):
        super().__init__()
        hidden = int(model.config.text_config.hidden_size)
        self.classes = nn.ParameterDict(
            {name: nn.Parameter(torch.randn(count, hidden) / hidden**0.5) for name, count in CLASSES.items()}
        )
        self._features: torch.Tensor | None = None
        model.model.multi_modal_projector.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._features = output

    def loss(self, patch_shapes: torch.Tensor, patch_colours: torch.Tensor) -> torch.Tensor:
        """Weighted cross-entropy of the probes on the image features of the last forward pass.

        ``patch_shapes`` / ``patch_colours`` ([images, patches]) are ``scenes.patch_labels``.
        """
        if self._features is None:
            raise RuntimeError("VisionProbe.loss needs a model forward pass with images first")
        features, self._features = self._features, None
        flat = features.flatten(0, 1)
        targets = _targets(patch_shapes, patch_colours)
        total = flat.new_zeros(())
        for name, weight in WEIGHTS.items():
            logits = flat @ self.classes[name].T
            total = total + weight * functional.cross_entropy(
                logits, targets[name].flatten(), ignore_index=IGNORE_LABEL
            )
        return total


def _targets(patch_shapes: torch.Tensor, patch_colours: torch.Tensor) -> dict[str, torch.Tensor]:
    images, patches = patch_shapes.shape
    index = torch.arange(patches)
    return {
        "shape": patch_shapes,
        "colour": patch_colours,
        "vertical": (index // GRID >= GRID // 2).long().expand(images, patches),
        "horizontal": (index % GRID >= GRID // 2).long().expand(images, patches),
    }
