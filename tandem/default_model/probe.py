"""Auxiliary vision loss for training: per-patch probes in the language model's word space.

Learning to see from a language loss alone is slow: a tiny LLaVA first fits the answer templates,
then sits on a long plateau guessing shapes and colours. The probe reads the projector's output
(the image tokens the language model receives) and trains each patch to name, in the language
model's own input-embedding space, its shape ("circle" ... or background), its colour ("red"
...) and its place ("top"/"bottom", "left"/"right"): class scores are dot products with the
embeddings of those words. Image tokens then look like the words that describe them, so
answering becomes "find the patch, copy its word" -- the kind of attention lookup a transformer
learns fast. Colour is an easy cue that crowds shape out when weighted equally, so it and the
place get smaller weights. Only the two background vectors are extra parameters; they are not
part of the saved checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional

from tandem.default_model.scenes import COLOURS, IGNORE_LABEL, SHAPES

WEIGHTS = {"shape": 1.0, "colour": 0.2, "vertical": 0.25, "horizontal": 0.25, "align": 1.0}


class VisionProbe(nn.Module):
    """Word-space probes on the projector's output, captured by a forward hook."""

    def __init__(self, model: Any, tokenizer: Any):
        super().__init__()
        hidden = int(model.config.text_config.hidden_size)
        self.background = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(hidden)) for name in ("shape", "colour")}
        )
        self._embeddings = (model.get_input_embeddings(),)  # a tuple: the model owns it, not the probe
        self._words = {
            "shape": _token_ids(tokenizer, SHAPES),
            "colour": _token_ids(tokenizer, tuple(COLOURS)),
            "vertical": _token_ids(tokenizer, ("top", "bottom")),
            "horizontal": _token_ids(tokenizer, ("left", "right")),
        }
        self._features: torch.Tensor | None = None
        self._oracle: tuple[float, torch.Tensor, torch.Tensor] | None = None
        model.model.multi_modal_projector.register_forward_hook(self._keep)

    def blend_oracle(self, weight: float, patch_shapes: torch.Tensor, patch_colours: torch.Tensor) -> None:
        """For the next forward pass only: the language model sees ``weight`` x the image tokens
        built from the patch labels (the words' embeddings, see ``_align``) + (1 - ``weight``) x
        the real ones. Clean keys let it learn to find "the square" among the image tokens
        before the vision side is fully trained; the weight falls to 0 during training."""
        self._oracle = (weight, patch_shapes, patch_colours) if weight > 0 else None

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        self._features = output
        if self._oracle is None:
            return output
        weight, shapes, colours = self._oracle
        self._oracle = None
        oracle = self._oracle_tokens(shapes, colours, output.shape[1])
        scale = output.detach().norm(dim=-1).mean() / oracle.detach().norm(dim=-1).mean().clamp_min(1e-6)
        return weight * scale * oracle + (1 - weight) * output

    def _oracle_tokens(self, shapes: torch.Tensor, colours: torch.Tensor, patches: int) -> torch.Tensor:
        grid = int(patches**0.5)
        rows = (torch.arange(patches) // grid >= grid // 2).long()
        cols = (torch.arange(patches) % grid >= grid // 2).long()
        embed = self._embeddings[0]
        place = embed(self._words["vertical"][rows]) + embed(self._words["horizontal"][cols])
        shown = (shapes > 0) & (colours > 0)
        shape_words = embed(self._words["shape"][(shapes - 1).clamp_min(0)])
        colour_words = embed(self._words["colour"][(colours - 1).clamp_min(0)])
        empty = self.background["shape"] + self.background["colour"]
        what = torch.where(shown[..., None], shape_words + colour_words, empty)
        return what + place

    def _classes(self, name: str) -> torch.Tensor:
        words = self._embeddings[0](self._words[name])
        return torch.cat([self.background[name][None], words]) if name in self.background else words

    def loss(self, patch_shapes: torch.Tensor, patch_colours: torch.Tensor) -> torch.Tensor:
        """Weighted cross-entropy of the probes on the image features of the last forward pass.

        ``patch_shapes`` / ``patch_colours`` ([images, patches]) are ``scenes.patch_labels``.
        """
        if self._features is None:
            raise RuntimeError("VisionProbe.loss needs a model forward pass with images first")
        features, self._features = self._features, None
        images, patches, _ = features.shape
        grid = int(patches**0.5)
        rows = torch.arange(patches) // grid
        cols = torch.arange(patches) % grid
        targets = {
            "shape": patch_shapes,
            "colour": patch_colours,
            "vertical": (rows >= grid // 2).long().expand(images, patches),
            "horizontal": (cols >= grid // 2).long().expand(images, patches),
        }
        flat = features.flatten(0, 1)
        total = WEIGHTS["align"] * self._align(flat, {name: t.flatten() for name, t in targets.items()})
        for name, weight in WEIGHTS.items():
            if name == "align":
                continue
            logits = flat @ self._classes(name).T
            total = total + weight * functional.cross_entropy(
                logits, targets[name].flatten(), ignore_index=IGNORE_LABEL
            )
        return total


    def _align(self, flat: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """1 - cosine between each shape's patch and the sum of the embeddings of the words that
        describe it (its shape, colour, "top"/"bottom", "left"/"right"): a shape's image token then
        looks like those words, equally loud, so the language model can find "the square" among
        the image tokens the way it matches a word it has seen before."""
        shown = (targets["shape"] > 0) & (targets["colour"] > 0)
        if not shown.any():
            return flat.new_zeros(())
        words = sum(
            self._embeddings[0](self._words[name][targets[name][shown] - offset])
            for name, offset in (("shape", 1), ("colour", 1), ("vertical", 0), ("horizontal", 0))
        )
        assert isinstance(words, torch.Tensor)
        cosine = functional.cosine_similarity(flat[shown], words.detach(), dim=-1)
        return (1 - cosine).mean()


def _token_ids(tokenizer: Any, words: tuple[str, ...]) -> torch.Tensor:
    """The single-token ids of `` word`` (as it follows a space in an answer) for each word."""
    ids = [tokenizer.encode(" " + word, add_special_tokens=False) for word in words]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"probe words must be single tokens: {dict(zip(words, ids, strict=True))}")
    return torch.tensor([i[0] for i in ids])
