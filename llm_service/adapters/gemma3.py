"""Gemma 3 (Gemma3ForConditionalGeneration): a Gemma 3 decoder behind a SigLIP tower + projector.

Prompt: the template writes ``<start_of_image>`` per image; ``Gemma3Processor`` rewrites each,
in the text before tokenising, to ``"\\n\\n<start_of_image>" + <image_soft_token> * N +
"<end_of_image>\\n\\n"``, so the blank lines tokenise together with the text around them. The
expander does the same with one ``<image_soft_token>``, which ``layout`` then expands to the
image's ``mm_tokens_per_image`` rows. Positions are sequential.

What else decides the answer: during prefill the rows of one image attend to each other both
ways (HF builds that from ``token_type_ids``; here ``attention_blocks``), text stays causal;
the decoder's embedding table scales token embeddings by sqrt(hidden) itself while image
features go in unscaled (as in HF's ``inputs_embeds`` path); sliding-window layers keep a full
cache and get their window from the mask (``llm_service.model``); generation stops on either
end id of ``generation_config.json`` (``<eos>``, ``<end_of_turn>``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from llm_service.adapters.base import (
    DUMMY_IMAGE_ID,
    NESTED_LANGUAGE_PREFIXES,
    Adapter,
    ImageSpan,
    PromptLayout,
)
from llm_service.conversation import ImageRef
from tandem.errors import InvalidInput


class Gemma3Adapter(Adapter):
    architectures = ("Gemma3ForConditionalGeneration",)
    weight_prefixes: ClassVar[dict[str, str]] = NESTED_LANGUAGE_PREFIXES

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    @property
    def tokens_per_image(self) -> int:
        return int(self.config.mm_tokens_per_image)

    def expander(self, tokenizer: Any) -> Callable[[str], str]:
        boi, eoi, image = (tokenizer.convert_ids_to_tokens(int(i)) for i in self._control_ids())
        block = f"\n\n{boi}{image}{eoi}\n\n"
        return lambda prompt: prompt.replace(boi, block)

    def _control_ids(self) -> tuple[int, int, int]:
        config = self.config
        return int(config.boi_token_index), int(config.eoi_token_index), self.image_token_id

    def check_image(self, span: ImageSpan) -> None:
        if span.image.num_tokens != self.tokens_per_image:
            raise InvalidInput(
                f"image {span.image.image_id[:12]} has num_tokens {span.image.num_tokens}; "
                f"this model takes {self.tokens_per_image} per image"
            )

    def attention_blocks(self, layout: PromptLayout) -> tuple[tuple[int, int], ...]:
        return tuple((span.start, span.end) for span in layout.spans)

    def dummy_image(self) -> ImageRef:
        return ImageRef(DUMMY_IMAGE_ID, self.tokens_per_image)
