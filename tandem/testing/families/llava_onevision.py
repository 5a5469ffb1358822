"""The ``"llava_onevision"`` tiny checkpoint: LLaVA-OneVision in the real HF classes.

``LlavaOnevisionForConditionalGeneration`` = a 2-layer SigLIP tower (32 px tiles, patch 8, so
4x4 features per tile, no CLS: strategy "full", last layer) + MLP projector +
``image_newline`` + the ``"qwen2"`` kind's 2-layer Qwen2 decoder, with the real
``LlavaOnevisionProcessor``. A prompt with one image takes it at any resolution: resized into
the best of ``IMAGE_GRID_PINPOINTS`` (LLaVA-NeXT's, in 32 px tiles), 16 base features, then the
tiles' features unpadded and, past ``ASPECT`` ("anyres_max_2": more than 2 tiles' worth),
bilinearly shrunk, one ``image_newline`` per row: 112x56 (width x height) costs 52 tokens,
84x112 and 140x140 46. A prompt with several images takes each padded to a square, one tile:
16 + 1 newline = 17 tokens. ChatML template (an image part renders ``<image>``) and byte-level
tokenizer as ``"qwen2_vl"``, with ``<image>`` and ``<video>`` added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import pre_tokenizers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Tokenizer,
)

from tandem.testing.checkpoints import (
    CHATML_TEMPLATE,
    INIT_RANGE,
    QWEN_SPECIALS,
    TOKENIZER_KWARGS,
    _save,
    _text_config,
    _train_bpe,
)
from tandem.testing.families.llava_next import IMAGE_GRID_PINPOINTS

TILE, PATCH, ASPECT = 32, 8, "anyres_max_2"
ONEVISION_TEMPLATE = CHATML_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>")
ONEVISION_TEMPLATE = ONEVISION_TEMPLATE.replace("<|vision_start|><|video_pad|><|vision_end|>", "<video>")


def onevision_tokenizer() -> Qwen2Tokenizer:
    """Qwen2's byte-level BPE, ChatML tokens, then ``<image>`` and ``<video>``."""
    backend = Qwen2Tokenizer().backend_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab, merges = _train_bpe(backend.pre_tokenizer, backend.normalizer, [], 600, alphabet)
    eot, rest = QWEN_SPECIALS[0], [*QWEN_SPECIALS[1:3], "<image>", "<video>"]
    kwargs: dict[str, Any] = {"merges": merges, "unk_token": None, "eos_token": eot, "pad_token": eot}
    tok = Qwen2Tokenizer(vocab=vocab, extra_special_tokens=rest, **kwargs, **TOKENIZER_KWARGS)
    tok.eos_token = "<|im_end|>"
    tok.chat_template = ONEVISION_TEMPLATE
    return tok


def build(path: Path) -> None:
    """Write the tiny LLaVA-OneVision checkpoint (model, generation config, processor) to ``path``."""
    tok = onevision_tokenizer()
    ids = tok.get_vocab()
    vision = {
        "model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": TILE, "patch_size": PATCH,
        "vision_use_head": False, "initializer_range": INIT_RANGE,
    }  # fmt: skip
    text = _text_config(tok) | {"model_type": "qwen2"}
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=ids["<image>"],
        video_token_index=ids["<video>"], vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_grid_pinpoints=IMAGE_GRID_PINPOINTS, vision_aspect_ratio=ASPECT, dtype="float32",
    )  # fmt: skip
    size = {"height": TILE, "width": TILE}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=IMAGE_GRID_PINPOINTS),
        tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(TILE // PATCH) ** 2, vision_feature_select_strategy="full",
        chat_template=ONEVISION_TEMPLATE, vision_aspect_ratio=ASPECT,
    )  # fmt: skip
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    _save(LlavaOnevisionForConditionalGeneration(config), processor, path, eos)
