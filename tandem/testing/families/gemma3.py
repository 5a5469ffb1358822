"""The ``"gemma3"`` tiny checkpoint: Gemma 3 (SigLIP + avg-pool projector + Gemma 3 decoder).

``Gemma3ForConditionalGeneration`` = 2-layer SigLIP vision tower (32 px images, patch 8, so 4x4
patches) + ``Gemma3MultiModalProjector`` (2x2 average pool to ``mm_tokens_per_image`` = 4, RMS
norm, projection) + a 4-layer Gemma 3 text model whose layers alternate sliding (window 16,
shorter than the test prompts) and full attention, with the real ``Gemma3Processor``. An image
part renders as ``<start_of_image>``, which the processor replaces by
``"\\n\\n<start_of_image>" + 4 * "<image_soft_token>" + "<end_of_image>\\n\\n"``. The template
writes ``<bos>`` itself; turns are ``<start_of_turn>user|model\\n...<end_of_turn>\\n``. The
generation config stops on ``<eos>`` or ``<end_of_turn>``, as Gemma 3's does. The tokenizer is
``GemmaTokenizer`` (space-split BPE with byte fallback) trained here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    GemmaTokenizer,
)

from tandem.testing.checkpoints import INIT_RANGE, TEXT_CONFIG, TOKENIZER_KWARGS, _corpus, _save

IMAGE, PATCH, MM_TOKENS, WINDOW, HIDDEN_HEAD = 32, 8, 4, 16, 16
TIED = False
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # ids 0..4, Gemma's order
CONTROLS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
# Gemma's template and processor put blank lines around images: let the tokenizer learn them.
CORPUS = ("<start_of_turn>user\n\n\nWhat is in this image?<end_of_turn>\n<start_of_turn>model\n",)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<start_of_image>"
    "{% elif p['type'] == 'text' %}{{ p['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _train(pre_tokenizer: Any, normalizer: Any, specials: list[str]) -> tuple[dict[str, int], list[Any]]:
    """BPE (vocab, merges) trained on the shared corpus plus ``CORPUS`` (x50)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=720, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_corpus() + list(CORPUS) * 50, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def gemma_tokenizer() -> GemmaTokenizer:
    """Gemma-style: <pad>/<eos>/<bos>/<unk>/<mask>, turn and image controls, bytes, then BPE."""
    split = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    specials = [*SPECIALS, *CONTROLS, *(f"<0x{i:02X}>" for i in range(256))]
    vocab, merges = _train(split, normalizers.Replace(" ", "\u2581"), specials)
    tok = GemmaTokenizer(vocab=vocab, merges=merges, extra_special_tokens=NAMED, **TOKENIZER_KWARGS)
    tok.add_special_tokens({"additional_special_tokens": list(CONTROLS)})
    return tok


def build(path: Path) -> None:
    """Write the tiny Gemma 3 checkpoint (model, generation config, processor) to ``path``."""
    tok = gemma_tokenizer()
    tok.chat_template = GEMMA3_TEMPLATE
    ids = tok.get_vocab()
    text: dict[str, Any] = TEXT_CONFIG | {
        "num_hidden_layers": 4, "head_dim": HIDDEN_HEAD, "sliding_window": WINDOW, "vocab_size": len(tok),
        "layer_types": ["sliding_attention", "full_attention"] * 2, "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "tie_word_embeddings": TIED,
        "query_pre_attn_scalar": HIDDEN_HEAD,
    }  # fmt: skip
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": IMAGE, "patch_size": PATCH, "initializer_range": INIT_RANGE, "dtype": "float32",
    }  # fmt: skip
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=MM_TOKENS,
        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"], initializer_range=INIT_RANGE, dtype="float32",
        tie_word_embeddings=TIED,
    )  # fmt: skip
    images = Gemma3ImageProcessor(size={"height": IMAGE, "width": IMAGE}, do_pan_and_scan=False)
    processor = Gemma3Processor(
        image_processor=images, tokenizer=tok, chat_template=GEMMA3_TEMPLATE, image_seq_length=MM_TOKENS
    )
    eos = [ids["<eos>"], ids["<end_of_turn>"]]
    _save(_randomised(Gemma3ForConditionalGeneration(config)), processor, path, eos)


def _randomised(model: Gemma3ForConditionalGeneration) -> Gemma3ForConditionalGeneration:
    """Random norms and projector too (HF starts them at zero: images would all look alike)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or "mm_input_projection" in name:
                parameter.normal_(0.0, INIT_RANGE)
    return model
