"""The interface every vision model family implements, and how its half of the weights is built.

An adapter owns the checkpoint's own Hugging Face image processor and a module holding only the
vision tower and projector (never the language model). The service calls it from two places:

- ``preprocess`` from the preprocessing thread pool (one image -> ``Pixels``; thread-safe),
- ``encode`` from the single encoder thread (several ``Pixels`` -> one batched forward).

``encode`` returns, per image, exactly the ``[num_tokens, text hidden_size]`` features that replace
the image placeholder tokens in the language model's ``inputs_embeds`` (what HF's
``get_image_features`` returns for that image). A family whose language side needs more per image
(Qwen3-VL's deepstack features) names those tensors in ``extras`` and overrides
``encode_features``; the service stores them in the image's record next to the features.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, PretrainedConfig

from tandem.models.checkpoint import load_subset

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class Pixels:
    """Preprocessed model input of one image (``values`` as the image processor returned it)."""

    values: torch.Tensor
    grid_thw: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"Pixels(shape={tuple(self.values.shape)}, grid_thw={self.grid_thw})"


@dataclass(frozen=True)
class ImageFeatures:
    """One image's output: the features that replace its placeholders and named extra tensors."""

    features: torch.Tensor
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __repr__(self) -> str:
        shapes = {name: tuple(t.shape) for name, t in self.extras.items()}
        return f"ImageFeatures(shape={tuple(self.features.shape)}, extras={shapes})"


class VisionAdapter(ABC):
    """One model family's preprocessing and vision forward (see the module docstring)."""

    architecture: ClassVar[str]
    # Names of the extra tensors every record of this family holds (``encode_features``).
    extras: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path, config: PretrainedConfig, device: str, dtype: torch.dtype):
        self.path = path
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.module = self.build_module().to(self.device).eval().requires_grad_(False)

    @classmethod
    def load(cls, path: Path, device: str = "cpu", dtype: str = "float32") -> VisionAdapter:
        """Read the config and processor, build the vision half and fill it from ``path``."""
        return cls(path, AutoConfig.from_pretrained(path), device, DTYPES[dtype])

    @abstractmethod
    def build_module(self) -> torch.nn.Module:
        """The vision tower + projector, built from the config and filled by ``load_subset``."""

    @abstractmethod
    def preprocess(self, image: Image.Image) -> Pixels:
        """One RGB image through the checkpoint's image processor."""

    @abstractmethod
    def encode(self, batch: list[Pixels]) -> list[torch.Tensor]:
        """One batched forward; ``[num_tokens, hidden_size]`` CPU features per image, in order."""

    def encode_features(self, batch: list[Pixels]) -> list[ImageFeatures]:
        """``encode`` with each image's extra tensors (none unless the family overrides this)."""
        return [ImageFeatures(features) for features in self.encode(batch)]

    @property
    def hidden_size(self) -> int:
        """Hidden size of the language model the features are projected to."""
        return int(self.config.get_text_config().hidden_size)

    @property
    def context_length(self) -> int:
        return int(getattr(self.config.get_text_config(), "max_position_embeddings", 0) or 0)

    def dummy_image(self) -> Image.Image:
        """A plain image that exercises preprocessing and the forward (warm-up, profiling, tests):
        the tower's own input size when the config has one."""
        size = int(getattr(self.config.vision_config, "image_size", 224) or 224)
        return Image.new("RGB", (size, size), (127, 127, 127))

    def forward_stacked(self, batch: list[Pixels]) -> list[torch.Tensor]:
        """One forward over equally shaped pixels; CPU features per image, in order."""
        pixels = torch.stack([p.values for p in batch]).to(self.device, self.dtype)
        with torch.inference_mode():
            features = self.module(pixels)
        return list(features.to("cpu").unbind(0))

    def fill(self, module: torch.nn.Module, prefixes: Mapping[str, str]) -> torch.nn.Module:
        """Load ``module``'s tensors from the checkpoint (``prefixes``: checkpoint -> module)."""
        load_subset(self.path, module, prefixes, self.dtype)
        return module
