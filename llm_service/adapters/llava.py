"""LLaVA (LlavaForConditionalGeneration): a Llama-family decoder behind a CLIP tower + projector.

The language half is ``text_config``'s decoder and LM head. ``<image>`` (``image_token_id``)
expands to the image's feature rows; positions are sequential.
"""

from __future__ import annotations

from typing import ClassVar

from llm_service.adapters.base import DUMMY_IMAGE_ID, NESTED_LANGUAGE_PREFIXES, Adapter
from llm_service.conversation import ImageRef


class LlavaAdapter(Adapter):
    architectures = ("LlavaForConditionalGeneration",)
    weight_prefixes: ClassVar[dict[str, str]] = NESTED_LANGUAGE_PREFIXES

    @property
    def image_token_id(self) -> int:
        token = getattr(self.config, "image_token_id", None)
        return int(token if token is not None else self.config.image_token_index)

    def dummy_image(self) -> ImageRef:
        return ImageRef(DUMMY_IMAGE_ID, int(getattr(self.config, "image_seq_length", 576)))
