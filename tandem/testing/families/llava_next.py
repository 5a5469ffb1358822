"""The ``"llava_next"`` tiny checkpoint: LLaVA-NeXT (any resolution) in the real HF classes.

``LlavaNextForConditionalGeneration`` = the ``"llava"`` kind's 2-layer CLIP tower (32 px tiles,
patch 8, so 4x4 features per tile) + MLP projector + ``image_newline`` + 2-layer Llama, with the
real ``LlavaNextProcessor``. ``IMAGE_GRID_PINPOINTS`` are LLaVA-v1.6's five resolutions scaled
from 336 to 32 px tiles: an image is resized into the best of them, cut into 32 px tiles and
preceded by one 32 px view of the whole image. ``<image>`` expands to 16 base features, then the
tiles' features with the padding rows/columns removed and one ``image_newline`` after each row:
a 64x48 (width x height) image costs 16 + 6*(8+1) = 70 tokens, 112x56 costs 16 + 4*(8+1) = 52,
56x112 costs 16 + 8*(4+1) = 56 (the processor's ``_get_number_of_features``). Vicuna template and
tokenizer as ``"llava"``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
)

from tandem.testing.checkpoints import INIT_RANGE, VICUNA_TEMPLATE, _save, _text_config, llama_tokenizer

TILE, PATCH = 32, 8
IMAGE_GRID_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]


def build(path: Path) -> None:
    """Write the tiny LLaVA-NeXT checkpoint (model, generation config, processor) to ``path``."""
    tok = llama_tokenizer(["<image>"])
    tok.chat_template = VICUNA_TEMPLATE
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=TILE,
        patch_size=PATCH, projection_dim=32, initializer_range=INIT_RANGE, dtype="float32",
    )  # fmt: skip
    config = LlavaNextConfig(
        vision_config=vision, text_config=LlamaConfig(**_text_config(tok)), image_seq_length=16,
        image_token_index=tok.get_vocab()["<image>"], vision_feature_select_strategy="default",
        vision_feature_layer=-2, image_grid_pinpoints=IMAGE_GRID_PINPOINTS, dtype="float32",
    )  # fmt: skip
    images = LlavaNextImageProcessor(
        size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE},
        image_grid_pinpoints=IMAGE_GRID_PINPOINTS,
    )  # fmt: skip
    processor = LlavaNextProcessor(
        image_processor=images, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
        image_token="<image>", num_additional_image_tokens=1, chat_template=VICUNA_TEMPLATE,
    )  # fmt: skip
    _save(LlavaNextForConditionalGeneration(config), processor, path, tok.eos_token_id)
