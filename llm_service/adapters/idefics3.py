"""Idefics3 (Idefics3ForConditionalGeneration): a Llama decoder behind a SigLIP tower and a
pixel-shuffle connector, images cut into tiles. SmolVLM (``smolvlm.py``) is the same here.

Prompt: the template writes one ``<image>`` per image; the processor replaces it by the image's
block. An image cut into rows x cols tiles (the vision side records the grid ``(1, rows, cols)``)
becomes, per tile, ``<fake_token_around_image><row_r_col_c>`` + ``image_seq_len`` ``<image>``,
``\\n`` after each row, then ``\\n<fake_token_around_image><global-img>`` + ``image_seq_len``
``<image>`` + ``<fake_token_around_image>``; an image left whole (no grid) only has that last,
global part. ``layout`` writes the same block: its markers are added tokens, which the tokenizer
splits off before anything else, so the block tokenises alone as it does inside the prompt.
The image's features fill its ``<image>`` rows in order, with marker tokens between the tiles
(``ImageSpan.rows``). Positions are sequential; attention is causal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from llm_service.adapters.base import DUMMY_IMAGE_ID, Adapter, ImageSpan, PromptLayout
from llm_service.conversation import ImageRef
from tandem.errors import InvalidInput


@dataclass(frozen=True)
class TileMarkers:
    """The processor's marker strings and the tokenizer's ``encode`` (no special tokens added)."""

    encode: Callable[[str], list[int]]
    fake: str = "<fake_token_around_image>"
    global_image: str = "<global-img>"
    image: str = "<image>"

    @classmethod
    def of(cls, tokenizer: Any, image_token_id: int) -> TileMarkers:
        backend = tokenizer.backend_tokenizer  # Rust tokenizer: encode is thread-safe
        return cls(
            lambda text: list(backend.encode(text, add_special_tokens=False).ids),
            getattr(tokenizer, "fake_image_token", None) or cls.fake,
            getattr(tokenizer, "global_image_token", None) or cls.global_image,
            tokenizer.convert_ids_to_tokens(image_token_id),
        )

    def block(self, rows: int, cols: int) -> str:
        """The processor's text for an image of rows x cols tiles, one ``image`` per frame."""
        tiles = "".join(
            "".join(f"{self.fake}<row_{r + 1}_col_{c + 1}>{self.image}" for c in range(cols)) + "\n"
            for r in range(rows)
        )
        return tiles + ("\n" if rows else "") + f"{self.fake}{self.global_image}{self.image}{self.fake}"


class Idefics3Adapter(Adapter):
    architectures = ("Idefics3ForConditionalGeneration",)
    weight_prefixes: ClassVar[dict[str, str]] = {"model.text_model.": "model.", "lm_head.": "lm_head."}

    def __init__(self, config: Any, markers: TileMarkers | None = None):
        super().__init__(config)
        self.markers = markers

    def for_tokenizer(self, tokenizer: Any) -> Idefics3Adapter:
        return type(self)(self.config, TileMarkers.of(tokenizer, self.image_token_id))

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    @property
    def image_seq_len(self) -> int:
        """Feature rows per frame: the tower's patch grid after the pixel shuffle (as HF computes it)."""
        vision = self.config.vision_config
        return int(
            (int(vision.image_size) // int(vision.patch_size)) ** 2 / int(self.config.scale_factor) ** 2
        )

    def tiles(self, image: ImageRef, grid: Sequence[int]) -> tuple[int, int]:
        """(rows, cols) of ``grid`` ((0, 0): a whole image), refused unless they give its token count."""
        if grid and (len(grid) != 3 or grid[0] != 1 or min(grid) < 1):
            raise InvalidInput(
                f"image {image.image_id[:12]} needs a (1, rows, cols) tile grid, got {list(grid)}"
            )
        rows, cols = (int(grid[1]), int(grid[2])) if grid else (0, 0)
        if (rows * cols + 1) * self.image_seq_len != image.num_tokens:
            raise InvalidInput(
                f"image {image.image_id[:12]}: {rows}x{cols} tiles do not give num_tokens {image.num_tokens} "
                f"({self.image_seq_len} per frame)"
            )
        return rows, cols

    def layout(self, token_ids: Sequence[int], images: Sequence[ImageRef]) -> PromptLayout:
        """Each ``<image>`` replaced by its image's block (see the module docstring)."""
        slots = [i for i, t in enumerate(token_ids) if t == self.image_token_id]
        if len(slots) != len(images):
            raise InvalidInput(
                f"the prompt has {len(slots)} image placeholders but the messages carry {len(images)} images"
            )
        out: list[int] = []
        spans: list[ImageSpan] = []
        previous = 0
        for slot, image in zip(slots, images, strict=True):
            out.extend(token_ids[previous:slot])
            spans.append(self._place(image, out))
            previous = slot + 1
        out.extend(token_ids[previous:])
        return PromptLayout(out, spans)

    def _place(self, image: ImageRef, out: list[int]) -> ImageSpan:
        """Append ``image``'s block to ``out``; its span, with the rows of its features."""
        if self.markers is None:
            raise RuntimeError("Idefics3Adapter.layout needs for_tokenizer() first")
        start, rows = len(out), list[int]()
        for token in self.markers.encode(self.markers.block(*self.tiles(image, image.grid_thw))):
            if token == self.image_token_id:
                rows.extend(range(len(out), len(out) + self.image_seq_len))
                out.extend([token] * self.image_seq_len)
            else:
                out.append(token)
        return ImageSpan(start, image, image.grid_thw, tuple(rows))

    def check_image(self, span: ImageSpan) -> None:
        self.tiles(span.image, span.grid_thw)

    def dummy_image(self) -> ImageRef:
        return ImageRef(DUMMY_IMAGE_ID, self.image_seq_len)
