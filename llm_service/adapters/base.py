"""What a model family teaches the language worker.

An ``Adapter`` is built once from the checkpoint's config and is stateless afterwards (safe to
call from any thread). Shared code asks it, never branches on the family:

- ``weight_prefixes``: checkpoint tensor prefixes -> ``model.`` (the decoder) / ``lm_head.``, for
  every layout the family has been saved in;
- ``add_special_tokens``: whether tokenising the rendered prompt adds the tokenizer's special
  tokens (the processor does for VLMs; a text-only tokenizer's chat template does not);
- ``layout``: expand each image placeholder token to that image's ``num_tokens``;
- ``check_image``: family rules on an image's token count and grid (once the grid is known);
- ``positions``: position ids [position_dims, L] and the position of the first generated token;
- ``dummy_image``: a valid image shape for warm-up;
- ``expander``: a rewrite of the rendered prompt text before tokenising, as the family's
  processor does (e.g. Gemma 3 turns ``<start_of_image>`` into a whole image block);
- ``attention_blocks``: prompt ranges that attend to each other both ways during prefill;
- ``extras`` / ``layer_inputs`` / ``dummy_extras``: the named extra tensors of the family's
  embedding records, and what the prefill adds from them to decoder layers' outputs (Qwen3-VL's
  deepstack features);
- ``for_tokenizer``: the adapter bound to the checkpoint's tokenizer, once at load, for a family
  whose ``layout`` writes tokens that only the tokenizer knows (Idefics3's tile markers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from llm_service.conversation import ImageRef
from tandem.embeddings.cache import Embedding
from tandem.errors import InvalidInput


@dataclass(frozen=True)
class ImageSpan:
    """An image's rows in the expanded prompt: ``[start, start + image.num_tokens)``, or, when the
    family puts text tokens between them (Idefics3's tile markers), the prompt rows ``rows``
    (ascending, one per feature row, from ``start``). The features are the rows
    ``[record_offset, record_offset + image.num_tokens)`` of the image's embedding record (a
    record may hold more than one way to see the image: LLaVA-OneVision's)."""

    start: int
    image: ImageRef
    grid_thw: tuple[int, ...] = ()
    rows: tuple[int, ...] = ()
    record_offset: int = 0

    @property
    def end(self) -> int:
        return self.rows[-1] + 1 if self.rows else self.start + self.image.num_tokens

    @property
    def feature_rows(self) -> Sequence[int]:
        """The prompt row of each of the image's feature rows, in order."""
        return self.rows or range(self.start, self.end)

    @property
    def record_rows(self) -> slice:
        """The rows of the image's embedding record that fill ``feature_rows``."""
        return slice(self.record_offset, self.record_offset + self.image.num_tokens)


@dataclass(frozen=True)
class PromptLayout:
    """Prompt token ids with placeholders expanded, and where each image sits."""

    token_ids: list[int]
    spans: list[ImageSpan]

    @property
    def image_tokens(self) -> int:
        return sum(span.image.num_tokens for span in self.spans)

    def __repr__(self) -> str:
        return f"PromptLayout(tokens={len(self.token_ids)}, images={len(self.spans)})"


# The image id of warm-up requests (never a real sha256 of bytes anyone sent).
DUMMY_IMAGE_ID = "0" * 64

# Where a VLM checkpoint keeps its language half: the transformers >= 4.52 layout first, then
# the original layout of the LLaVA-style hub checkpoints (``language_model.model.*``).
NESTED_LANGUAGE_PREFIXES: dict[str, str] = {
    "model.language_model.": "model.",
    "lm_head.": "lm_head.",
    "language_model.model.": "model.",
    "language_model.lm_head.": "lm_head.",
}


class Adapter:
    """Base of the language-side family adapters (see the module docstring)."""

    architectures: ClassVar[tuple[str, ...]] = ()
    is_vlm: ClassVar[bool] = True
    # Names of the extra tensors every embedding record of this family holds (none for most).
    extras: ClassVar[tuple[str, ...]] = ()
    position_dims: ClassVar[int] = 1
    weight_prefixes: ClassVar[dict[str, str]] = {"model.": "model.", "lm_head.": "lm_head."}

    def __init__(self, config: Any):
        self.config = config

    @property
    def text_config(self) -> Any:
        """The decoder's config (the whole config for text-only checkpoints)."""
        return self.config.get_text_config()

    @property
    def image_token_id(self) -> int | None:
        """The placeholder token id an image occupies; None for text-only models."""
        return None

    def add_special_tokens(self, prompt: str, bos_token: str | None) -> bool:
        """Processor semantics: add special tokens unless the template already wrote the BOS."""
        return not (bos_token and prompt.startswith(bos_token))

    def layout(self, token_ids: Sequence[int], images: Sequence[ImageRef]) -> PromptLayout:
        """Replace the i-th placeholder by ``images[i].num_tokens`` placeholders."""
        placeholder = self.image_token_id
        slots = [i for i, t in enumerate(token_ids) if t == placeholder] if placeholder is not None else []
        if len(slots) != len(images):
            raise InvalidInput(
                f"the prompt has {len(slots)} image placeholders but the messages carry {len(images)} images"
            )
        out: list[int] = []
        spans: list[ImageSpan] = []
        previous = 0
        for slot, image in zip(slots, images, strict=True):
            if image.num_tokens < 1:
                raise InvalidInput(
                    f"image {image.image_id[:12]} has num_tokens {image.num_tokens}; expected >= 1"
                )
            out.extend(token_ids[previous:slot])
            spans.append(ImageSpan(len(out), image, image.grid_thw))
            out.extend([token_ids[slot]] * image.num_tokens)
            previous = slot + 1
        out.extend(token_ids[previous:])
        return PromptLayout(out, spans)

    def check_image(self, span: ImageSpan) -> None:
        """Refuse an image whose token count or grid this family cannot place (InvalidInput)."""

    def positions(self, layout: PromptLayout) -> tuple[torch.Tensor, int]:
        """Sequential positions [1, L]; the first generated token sits at L."""
        length = len(layout.token_ids)
        return torch.arange(length, dtype=torch.long).unsqueeze(0), length

    def for_tokenizer(self, tokenizer: Any) -> Adapter:
        """This adapter for serving with ``tokenizer`` (called once at load; default: itself)."""
        return self

    def expander(self, tokenizer: Any) -> Callable[[str], str] | None:
        """The processor's rewrite of the rendered prompt text (None: tokenised as rendered)."""
        return None

    def attention_blocks(self, layout: PromptLayout) -> tuple[tuple[int, int], ...]:
        """Prompt ranges [start, end) that attend bidirectionally in prefill (none: all causal)."""
        return ()

    def layer_inputs(self, layout: PromptLayout, embeddings: Sequence[Embedding]) -> torch.Tensor | None:
        """What prefill adds to the output of decoder layers 0..K-1 at each prompt row, [L, K, H]
        (zeros at text rows), from the images' records; None: nothing (most families)."""
        return None

    def dummy_extras(self, num_tokens: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Zero extra tensors for a warm-up image's record (``extras`` by name)."""
        return {}

    def dummy_image(self) -> ImageRef:
        """An image of a size this family produces, for warm-up (features are made by the caller)."""
        raise NotImplementedError(f"{type(self).__name__} takes no images")
