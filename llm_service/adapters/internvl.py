"""InternVL (InternVLForConditionalGeneration): a Qwen2 (or other) decoder behind InternViT, a
pixel unshuffle and an MLP projector, images cut into tiles.

Prompt: the template writes ``<IMG_CONTEXT>`` per image; ``InternVLProcessor`` replaces it with
``<img>`` + ``image_seq_length * tiles`` ``<IMG_CONTEXT>`` + ``</img>``. The expander writes
``<img><IMG_CONTEXT></img>`` (the tokenizer names the three: ``start_image_token``,
``context_image_token``, ``end_image_token``) and ``layout`` expands the context token to the
image's ``num_tokens``, which the vision side recorded for its tile count. Positions are
sequential; attention is causal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from llm_service.adapters.base import DUMMY_IMAGE_ID, NESTED_LANGUAGE_PREFIXES, Adapter, ImageSpan
from llm_service.conversation import ImageRef
from tandem.errors import InvalidInput


class InternVLAdapter(Adapter):
    architectures = ("InternVLForConditionalGeneration",)
    weight_prefixes: ClassVar[dict[str, str]] = NESTED_LANGUAGE_PREFIXES

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    @property
    def tokens_per_tile(self) -> int:
        return int(self.config.image_seq_length)

    def expander(self, tokenizer: Any) -> Callable[[str], str]:
        context = tokenizer.convert_ids_to_tokens(self.image_token_id)
        start = getattr(tokenizer, "start_image_token", None) or "<img>"
        end = getattr(tokenizer, "end_image_token", None) or "</img>"
        return lambda prompt: prompt.replace(context, f"{start}{context}{end}")

    def check_image(self, span: ImageSpan) -> None:
        if span.image.num_tokens % self.tokens_per_tile:
            raise InvalidInput(
                f"image {span.image.image_id[:12]} has num_tokens {span.image.num_tokens}; "
                f"this model takes a multiple of {self.tokens_per_tile} (tokens per tile)"
            )

    def dummy_image(self) -> ImageRef:
        return ImageRef(DUMMY_IMAGE_ID, self.tokens_per_tile)
