"""LLaVA-NeXT (LlavaNextForConditionalGeneration): LLaVA's language half, any-resolution images.

Same decoder layouts, ``<image>`` token and sequential positions as LLaVA. What differs is that
an image's token count depends on its size (base view + unpadded tiles + one ``image_newline``
per row), so the language side cannot derive it: ``<image>`` expands to the ``num_tokens`` the
vision side recorded for that image, which equals ``LlavaNextProcessor``'s expansion.
"""

from __future__ import annotations

from llm_service.adapters.base import DUMMY_IMAGE_ID
from llm_service.adapters.llava import LlavaAdapter
from llm_service.conversation import ImageRef


class LlavaNextAdapter(LlavaAdapter):
    architectures = ("LlavaNextForConditionalGeneration",)

    def dummy_image(self) -> ImageRef:
        """A base view without tiles: the tower's patch grid plus one ``image_newline``."""
        vision = self.config.vision_config
        return ImageRef(DUMMY_IMAGE_ID, (int(vision.image_size) // int(vision.patch_size)) ** 2 + 1)
