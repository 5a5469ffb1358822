"""SmolVLM (SmolVLMForConditionalGeneration): Idefics3's language half under another name.

Same Llama decoder layout (``model.text_model.*``), ``<image>`` blocks of tiles with row/column
markers and a global image, sequential positions (``idefics3.py``). SmolVLM's tokenizers name
their markers (``fake_image_token``, ``global_image_token``); the defaults are Idefics3's.
"""

from __future__ import annotations

from llm_service.adapters.idefics3 import Idefics3Adapter


class SmolVLMAdapter(Idefics3Adapter):
    architectures = ("SmolVLMForConditionalGeneration",)
