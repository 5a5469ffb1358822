"""How each family's image embeddings go to vLLM, keyed by Hugging Face architecture name.

vLLM takes precomputed image embeddings (``enable_mm_embeds``) in one of two shapes:

- LLaVA-style models: ``{"image": [features, ...]}``, one [num_tokens, H] tensor per image;
- Qwen2-VL-style models (M-RoPE needs each image's patch grid): ``{"image": {"image_embeds":
  [sum of num_tokens, H], "image_grid_thw": [num_images, 3]}}``.

Either way ``multi_modal_uuids`` carries Tandem's image ids, so vLLM's prefix and processor
caches key on the same identity as Tandem's embedding cache. Text-only checkpoints send no
images. Any other vision-language family is refused at start-up (``UnsupportedByVllm``) with
the list of those that work: vLLM cannot take its embeddings the way Tandem computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llm_service.engine.types import PromptImage

MultiModalData = dict[str, Any]


class UnsupportedByVllm(ValueError):
    """The checkpoint's family cannot be served by the vLLM engine (image embeddings refused)."""


def per_image(images: Sequence[PromptImage], dtype: torch.dtype) -> MultiModalData:
    """LLaVA: one [num_tokens, H] tensor per image."""
    return {"image": [image.features.to(dtype) for image in images]}


def with_grids(images: Sequence[PromptImage], dtype: torch.dtype) -> MultiModalData:
    """Qwen2-VL: all images' rows concatenated, plus each image's (t, h, w) patch grid."""
    embeds = torch.cat([image.features.to(dtype) for image in images])
    grids = torch.tensor([list(image.grid_thw) for image in images], dtype=torch.long)
    return {"image": {"image_embeds": embeds, "image_grid_thw": grids}}


@dataclass(frozen=True)
class VllmFamily:
    """What the engine needs to know of a family: how to package its images for vLLM."""

    name: str
    pack: Callable[[Sequence[PromptImage], torch.dtype], MultiModalData] | None  # None: text-only
    modalities: tuple[str, ...] = ("image",)  # encoder inputs to run embed-only (tower skipped)

    def multi_modal(self, images: Sequence[PromptImage], dtype: torch.dtype) -> dict[str, Any]:
        """The prompt's ``multi_modal_data`` and ``multi_modal_uuids`` ({} for no image)."""
        if not images:
            return {}
        if self.pack is None:
            raise UnsupportedByVllm(f"{self.name} takes no images")
        return {
            "multi_modal_data": self.pack(images, dtype),
            "multi_modal_uuids": {"image": [image.image_id for image in images]},
        }


FAMILIES: dict[str, VllmFamily] = {
    "LlavaForConditionalGeneration": VllmFamily("LLaVA", per_image),
    "Qwen2VLForConditionalGeneration": VllmFamily("Qwen2-VL", with_grids, ("image", "video")),
    "Qwen2_5_VLForConditionalGeneration": VllmFamily("Qwen2.5-VL", with_grids, ("image", "video")),
}
TEXT_ONLY = VllmFamily("text-only", None, ())


def family_for(architecture: str, is_vlm: bool) -> VllmFamily:
    """The family of ``architecture``; text-only models need nothing; other VLMs are refused."""
    if not is_vlm:
        return TEXT_ONLY
    family = FAMILIES.get(architecture)
    if family is None:
        supported = ", ".join(sorted(FAMILIES))
        raise UnsupportedByVllm(
            f"--engine vllm cannot serve {architecture}: vLLM does not take this family's image "
            f"embeddings as Tandem's vision service computes them. It serves {supported} and "
            "text-only models; use --engine builtin for this checkpoint"
        )
    return family
