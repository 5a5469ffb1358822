"""SmolVLM (``SmolVLMForConditionalGeneration``): Idefics3's vision half in SmolVLM's classes.

Same tower, pixel-shuffle connector, tiling and checkpoint layout (``idefics3.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers.models.smolvlm.modeling_smolvlm import SmolVLMConnector, SmolVLMVisionTransformer

from vision_service.adapters.idefics3 import Idefics3Adapter


class SmolVLMAdapter(Idefics3Adapter):
    """SmolVLM / SmolVLM2 checkpoints."""

    architecture = "SmolVLMForConditionalGeneration"
    tower_class: ClassVar[Any] = SmolVLMVisionTransformer
    connector_class: ClassVar[Any] = SmolVLMConnector
