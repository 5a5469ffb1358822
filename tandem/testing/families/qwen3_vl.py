"""The ``"qwen3_vl"`` tiny checkpoint: Qwen3-VL (deepstack vision features) in the real HF classes.

``Qwen3VLForConditionalGeneration`` = a 3-layer vision tower (patch 16, merge 2, a learned 4x4
position grid interpolated to each image's grid) whose blocks 0 and 1 also feed deepstack mergers
(``DEEPSTACK``): their merged features are added to the hidden states of text layers 0 and 1 at
the image rows; the final merger's features replace the ``<|image_pad|>`` rows. The text model is
the Qwen-VL kinds' (2 layers, head dim 16, interleaved M-RoPE), with their tokenizer and ChatML
template, and the real ``Qwen3VLProcessor``. Images are resized to between 64x64 and 160x160
pixels, so one costs (h/32)*(w/32) = 4..25 ``<|image_pad|>`` tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from tandem.testing.checkpoints import (
    CHATML_TEMPLATE,
    HEADS,
    HIDDEN,
    INIT_RANGE,
    _save,
    mrope_section,
    qwen_vl_parts,
)

DEEPSTACK = [0, 1]  # vision blocks whose features go to text layers 0 and 1
PIXELS: dict[str, Any] = {"min_pixels": 64 * 64, "max_pixels": 160 * 160}
HALF = [0.5, 0.5, 0.5]  # Qwen3-VL normalises to [-1, 1]


def build(path: Path) -> None:
    """Write the tiny Qwen3-VL checkpoint (model, generation config, processor) to ``path``."""
    tok, config, eos = qwen_vl_parts()
    head_dim = HIDDEN // HEADS
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": mrope_section(head_dim)}
    config["text_config"] = config["text_config"] | {"head_dim": head_dim, "rope_parameters": rope}
    vision = {
        "depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": HIDDEN,
        "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 16,
        "deepstack_visual_indexes": DEEPSTACK, "initializer_range": INIT_RANGE, "dtype": "float32",
    }  # fmt: skip
    image_processor = Qwen2VLImageProcessor(patch_size=16, image_mean=HALF, image_std=HALF, **PIXELS)
    processor = Qwen3VLProcessor(
        image_processor=image_processor, video_processor=Qwen3VLVideoProcessor(patch_size=16),
        tokenizer=tok, chat_template=CHATML_TEMPLATE,
    )  # fmt: skip
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(vision_config=vision, **config))
    _save(model, processor, path, eos)
