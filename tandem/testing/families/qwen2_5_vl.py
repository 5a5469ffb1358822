"""The ``"qwen2_5_vl"`` tiny checkpoint: Qwen2.5-VL (windowed vision attention) in the real HF classes.

``Qwen2_5_VLForConditionalGeneration`` = a 3-layer vision tower (patch 14, merge 2) whose blocks
0 and 2 attend inside windows of ``WINDOW`` = 56 px (2x2 merged tokens) and block 1 over the whole
image, the patch merger into the text hidden size, and the ``"qwen2_vl"`` kind's 2-layer text
model, tokenizer and ChatML template, with the real ``Qwen2_5_VLProcessor``. Images are resized
to between 56x56 and 140x140 pixels, so one costs (h/28)*(w/28) = 4..25 ``<|image_pad|>`` tokens
and spans one window (64x48 -> 56x56) up to nine (140x140; 84 px sides leave a ragged window).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from tandem.testing.checkpoints import CHATML_TEMPLATE, HIDDEN, INIT_RANGE, _save, qwen_vl_parts

WINDOW = 56  # pixels: 56 // merge 2 // patch 14 = windows of 2x2 merged tokens
PIXELS: dict[str, Any] = {"min_pixels": 56 * 56, "max_pixels": 140 * 140}


def build(path: Path) -> None:
    """Write the tiny Qwen2.5-VL checkpoint (model, generation config, processor) to ``path``."""
    tok, config, eos = qwen_vl_parts()
    vision = {
        "depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": HIDDEN,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": WINDOW,
        "fullatt_block_indexes": [1], "tokens_per_second": 2, "initializer_range": INIT_RANGE,
        "dtype": "float32",
    }  # fmt: skip
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**PIXELS), video_processor=Qwen2VLVideoProcessor(**PIXELS),
        tokenizer=tok, chat_template=CHATML_TEMPLATE,
    )  # fmt: skip
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(vision_config=vision, **config))
    _save(model, processor, path, eos)
