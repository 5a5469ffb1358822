"""The ``"internvl"`` tiny checkpoint: InternVL (InternViT, pixel unshuffle, MLP projector, tiles).

``InternVLForConditionalGeneration`` = a 2-layer InternViT tower (32 px tiles, patch 8: a CLS
token and 4x4 patches; the "default" strategy drops the CLS) + pixel unshuffle
(``downsample_ratio`` 0.5: 2x2 neighbouring patches become one token of 4x the width) + the
layer-normed MLP projector + the ``"qwen2"`` kind's 2-layer Qwen2 decoder, with the real
``InternVLProcessor`` and ``GotOcr2ImageProcessor``. The image processor cuts an image into
1..``MAX_TILES`` tiles of the grid closest to its aspect ratio, plus a thumbnail tile when there
is more than one, and each tile costs 4 tokens: ``<IMG_CONTEXT>`` (the template's image part)
becomes ``<img>`` + 4 * tiles ``<IMG_CONTEXT>`` + ``</img>``. ChatML template and byte-level
tokenizer as ``"qwen2_vl"``, with InternVL's image tokens named on the tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import pre_tokenizers
from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
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

TILE, PATCH, MAX_TILES = 32, 8, 6
TOKENS_PER_TILE = (TILE // PATCH) ** 2 // 4
NAMED = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
INTERNVL_TEMPLATE = CHATML_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>")
INTERNVL_TEMPLATE = INTERNVL_TEMPLATE.replace("<|vision_start|><|video_pad|><|vision_end|>", "<video>")


def internvl_tokenizer() -> Qwen2Tokenizer:
    """Qwen2's byte-level BPE, the ChatML tokens, then InternVL's named image tokens."""
    backend = Qwen2Tokenizer().backend_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab, merges = _train_bpe(backend.pre_tokenizer, backend.normalizer, [], 600, alphabet)
    eot = QWEN_SPECIALS[0]
    kwargs: dict[str, Any] = {"merges": merges, "unk_token": None, "eos_token": eot, "pad_token": eot}
    tok = Qwen2Tokenizer(vocab=vocab, extra_special_tokens=NAMED, **kwargs, **TOKENIZER_KWARGS)
    tok.add_special_tokens({"additional_special_tokens": [*QWEN_SPECIALS[1:3], *NAMED.values()]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = INTERNVL_TEMPLATE
    return tok


def build(path: Path) -> None:
    """Write the tiny InternVL checkpoint (model, generation config, processor) to ``path``."""
    tok = internvl_tokenizer()
    ids = tok.get_vocab()
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": [TILE, TILE], "patch_size": [PATCH, PATCH], "initializer_range": INIT_RANGE,
    }  # fmt: skip
    text = _text_config(tok) | {"model_type": "qwen2"}
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=TOKENS_PER_TILE, downsample_ratio=0.5, vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=False, dtype="float32",
    )  # fmt: skip
    size = {"height": TILE, "width": TILE}
    images = GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=MAX_TILES)
    processor = InternVLProcessor(
        image_processor=images, tokenizer=tok, video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=TOKENS_PER_TILE, chat_template=INTERNVL_TEMPLATE,
    )  # fmt: skip
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    _save(InternVLForConditionalGeneration(config), processor, path, eos)
