"""LLaVA-OneVision (LlavaOnevisionForConditionalGeneration): LLaVA-NeXT's language half, and an
image seen one of two ways by how many images the prompt holds.

HF encodes an image at any resolution when it is the prompt's only image, and as one square
tile plus an ``image_newline`` when the prompt holds several (``batch_num_images``; history
images count). The vision side stores both in one record, the alone rows first, then the
``side**2 + 1`` several rows (``vision_service/adapters/llava_onevision.py``); ``layout`` counts
the prompt's images and expands each ``<image>`` to the rows of that variant, which the span
takes from the record (``ImageSpan.record_offset``). Prompt keys follow the record rows, so the
prefix cache never mistakes one variant's rows for the other's. Decoder (Qwen2 on hub
checkpoints), ``<image>`` token and sequential positions as LLaVA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from llm_service.adapters.base import DUMMY_IMAGE_ID, ImageSpan, PromptLayout
from llm_service.adapters.llava import LlavaAdapter
from llm_service.conversation import ImageRef
from tandem.errors import InvalidInput


class LlavaOnevisionAdapter(LlavaAdapter):
    architectures = ("LlavaOnevisionForConditionalGeneration",)

    @property
    def several_tokens(self) -> int:
        """Rows of an image in a prompt of several: one tile's features and one newline."""
        vision = self.config.vision_config
        tile = (int(vision.image_size) // int(vision.patch_size)) ** 2
        return tile + 1 - (self.config.vision_feature_select_strategy == "default")

    def layout(self, token_ids: Sequence[int], images: Sequence[ImageRef]) -> PromptLayout:
        """``<image>`` expanded to the variant of the prompt's image count, rows from the record."""
        for image in images:
            self._check_record(image)
        several = len(images) > 1
        views = [self._view(image, several) for image in images]
        laid = super().layout(token_ids, [view for view, _ in views])
        spans = [
            dataclasses.replace(span, record_offset=offset)
            for span, (_, offset) in zip(laid.spans, views, strict=True)
        ]
        return dataclasses.replace(laid, spans=spans)

    def _view(self, image: ImageRef, several: bool) -> tuple[ImageRef, int]:
        """The image as this prompt sees it (its token count) and its first row in the record."""
        alone = image.num_tokens - self.several_tokens
        if several:
            return dataclasses.replace(image, num_tokens=self.several_tokens), alone
        return dataclasses.replace(image, num_tokens=alone), 0

    def _check_record(self, image: ImageRef) -> None:
        if image.num_tokens < 2 * self.several_tokens:
            raise InvalidInput(
                f"image {image.image_id[:12]} has num_tokens {image.num_tokens}; a LLaVA-OneVision record "
                f"holds at least {2 * self.several_tokens} (both ways to see the image)"
            )

    def check_image(self, span: ImageSpan) -> None:
        if span.grid_thw:
            raise InvalidInput(f"image {span.image.image_id[:12]}: LLaVA-OneVision records carry no grid")

    def dummy_image(self) -> ImageRef:
        """A record of an image without tiles: base view + newline, then the square view's rows."""
        return ImageRef(DUMMY_IMAGE_ID, 2 * self.several_tokens)
