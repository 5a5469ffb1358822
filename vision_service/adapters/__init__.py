"""Explicit registry of vision adapters, keyed by the checkpoint's HF ``architectures[0]``.

Adding a family = one file with a ``VisionAdapter`` subclass and one line in ``ADAPTERS``.
Nothing is discovered implicitly; an unknown architecture fails with the supported list.
"""

from __future__ import annotations

from pathlib import Path

from tandem.models.checkpoint import read_config
from vision_service.adapters.base import ImageFeatures, Pixels, VisionAdapter
from vision_service.adapters.gemma3 import Gemma3Adapter
from vision_service.adapters.idefics3 import Idefics3Adapter
from vision_service.adapters.internvl import InternVLAdapter
from vision_service.adapters.llava import LlavaAdapter
from vision_service.adapters.llava_next import LlavaNextAdapter
from vision_service.adapters.llava_onevision import LlavaOnevisionAdapter
from vision_service.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from vision_service.adapters.qwen2_vl import Qwen2VLAdapter
from vision_service.adapters.qwen3_vl import Qwen3VLAdapter
from vision_service.adapters.smolvlm import SmolVLMAdapter

ADAPTERS: dict[str, type[VisionAdapter]] = {
    Gemma3Adapter.architecture: Gemma3Adapter,
    Idefics3Adapter.architecture: Idefics3Adapter,
    InternVLAdapter.architecture: InternVLAdapter,
    LlavaAdapter.architecture: LlavaAdapter,
    LlavaNextAdapter.architecture: LlavaNextAdapter,
    LlavaOnevisionAdapter.architecture: LlavaOnevisionAdapter,
    Qwen2VLAdapter.architecture: Qwen2VLAdapter,
    Qwen2_5_VLAdapter.architecture: Qwen2_5_VLAdapter,
    Qwen3VLAdapter.architecture: Qwen3VLAdapter,
    SmolVLMAdapter.architecture: SmolVLMAdapter,
}

__all__ = [
    "ADAPTERS",
    "ImageFeatures",
    "Pixels",
    "UnsupportedModel",
    "VisionAdapter",
    "adapter_for",
    "architecture_of",
    "load_adapter",
]


class UnsupportedModel(ValueError):
    """The checkpoint's architecture has no vision adapter."""


def architecture_of(path: Path) -> str:
    """``architectures[0]`` of the checkpoint's config.json ('' when absent)."""
    architectures = read_config(path).get("architectures") or [""]
    return str(architectures[0]) if isinstance(architectures, list) else ""


def adapter_for(architecture: str) -> type[VisionAdapter]:
    """The adapter class of ``architecture``; ``UnsupportedModel`` lists the supported ones."""
    try:
        return ADAPTERS[architecture]
    except KeyError:
        supported = ", ".join(sorted(ADAPTERS))
        raise UnsupportedModel(
            f"architecture {architecture or '(none)'!r} has no vision adapter; supported: {supported}"
        ) from None


def load_adapter(path: Path, device: str = "cpu", dtype: str = "float32") -> VisionAdapter:
    """Pick the adapter for the checkpoint at ``path`` and load its vision half."""
    return adapter_for(architecture_of(path)).load(path, device, dtype)
