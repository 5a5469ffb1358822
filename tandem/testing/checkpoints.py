"""Tiny random checkpoints in real Hugging Face classes, for tests, benchmarks and demos.

Each checkpoint is saved with ``save_pretrained`` so it loads back through the same
``Auto*.from_pretrained(path)`` code path as a hub checkpoint. Weights are random
(float32, fixed seed, so two builds are identical); tokenizers are BPE models trained
here on a small generated English corpus. Nothing is downloaded.

Kinds:

* ``"llava"`` -- LLaVA-1.5 layout: ``LlavaForConditionalGeneration`` = CLIP vision tower
  (32 px images, patch 8, 2 layers) + 2-layer MLP projector + tiny Llama. ``LlavaProcessor``
  with ``CLIPImageProcessor``; ``<image>`` expands to 16 tokens (4x4 patches, CLS dropped).
  Vicuna-style template: ``"{system} USER: <image>\\n{text} ASSISTANT: {answer}</s>"``.
* ``"qwen2_vl"`` -- ``Qwen2VLForConditionalGeneration`` (patch 14, merge 2) with the real
  ``Qwen2VLProcessor``; images are resized to 56..112 px a side, so an image costs
  (h/28)*(w/28) ``<|image_pad|>`` tokens (4 for ``make_test_image()``). ChatML template
  with ``<|vision_start|><|image_pad|><|vision_end|>`` for each image part.
* ``"llama"`` -- text-only ``LlamaForCausalLM``, same tokenizer family and template as llava.
* ``"qwen2"`` -- text-only ``Qwen2ForCausalLM`` with the Qwen tokenizer and a ChatML template.

Llama-family tokenizers are ``LlamaTokenizer`` (Metaspace BPE with byte fallback, as in
Llama-2 / Vicuna); Qwen tokenizers are byte-level ``Qwen2Tokenizer`` BPE. Both are trained
against the class's own pre-tokenizer, so reloading the saved files rebuilds the same tokenizer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.tokenization_utils_tokenizers import TokenizersBackend

KINDS: tuple[str, ...] = ("llava", "qwen2_vl", "llama", "qwen2")
MARKER = ".tandem-checkpoint.json"

_INIT_RANGE = 0.15  # large enough that greedy decoding has no near-ties
_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "initializer_range": _INIT_RANGE,
         "tie_word_embeddings": False, "dtype": "float32"}  # fmt: skip
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")  # fmt: skip
_BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]

_TEXTS = "{{ parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }}"
VICUNA_TEMPLATE = (
    "{% for m in messages %}"
    "{% set parts = [{'type': 'text', 'text': m['content']}] if m['content'] is string else m['content'] %}"
    "{% if m['role'] == 'system' %}" + _TEXTS + " "
    "{% elif m['role'] == 'user' %}USER: {% for p in parts if p['type'] == 'image' %}<image>\n{% endfor %}"
    + _TEXTS + " "
    "{% else %}ASSISTANT: " + _TEXTS + "</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif p['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus(n: int = 1500) -> list[str]:
    """Deterministic English sentences plus chat-template words, to train the tokenizers on."""
    rng = random.Random(1234)
    subjects = "the cat|a dog|my friend|the model|this image|a small bird|the red car|our team|she|he".split("|")
    verbs = "sees|likes|describes|shows|paints|finds|reads|answers|builds|watches|holds".split("|")
    objects = ("a blue box|the green tree|two apples|the sky|a picture|the river|some text|a white house|"
               "the question|three stars|a yellow ball").split("|")  # fmt: skip
    tails = ["", " today", " in the morning", " near the water", " very quickly", " again", " with care"]
    chat = ["USER: What is in this image? ASSISTANT: It shows", "system user assistant",
            "You are a helpful assistant.", "Hello, how are you? I am fine, thank you."]  # fmt: skip
    lines = []
    for i in range(n):
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}."
        lines.append(s.capitalize() + rng.choice(["", f" {rng.randint(0, 999)} items.", " Why? Because!"]))
        lines.append(chat[i % len(chat)])
    return lines


def _train_bpe(pre_tokenizer: Any, normalizer: Any, specials: list[str], vocab_size: int,
               alphabet: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:  # fmt: skip
    """Train a BPE model on ``_corpus()``; return (vocab, merges)."""
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [(a, b) for a, b in (m if isinstance(m, list) else m.split(" ") for m in model["merges"])]


def llama_tokenizer(extra_special: list[str]) -> LlamaTokenizer:
    """Llama-2 / Vicuna style: <unk>=0, <s>=1, </s>=2, <0x00>..<0xFF>, BPE, ``extra_special``, <pad>."""
    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    vocab, merges = _train_bpe(metaspace, None, ["<unk>", "<s>", "</s>", *_BYTE_TOKENS], 700, [])
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False,
                         extra_special_tokens=extra_special)  # fmt: skip
    tok.add_special_tokens({"pad_token": "<pad>"})  # after <image>, as in llava-hf (<image>, <pad>)
    return tok


def qwen_tokenizer() -> Qwen2Tokenizer:
    """Qwen2 style byte-level BPE with ChatML and vision special tokens."""
    backend = Qwen2Tokenizer().backend_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab, merges = _train_bpe(backend.pre_tokenizer, backend.normalizer, [], 600, alphabet)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token=_QWEN_SPECIALS[0],
                         pad_token=_QWEN_SPECIALS[0], extra_special_tokens=list(_QWEN_SPECIALS[1:]))  # fmt: skip
    tok.eos_token = "<|im_end|>"
    return tok


def _token_ids(tok: TokenizersBackend) -> dict[str, Any]:
    return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
            "bos_token_id": tok.bos_token_id}


def _save(model: PreTrainedModel, saveables: list[Any], path: Path, eos: int | list[int], pad: int) -> None:
    bos = getattr(model.config.get_text_config(), "bos_token_id", None)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(path)
    for obj in saveables:
        obj.save_pretrained(path)


def _build_llama(path: Path) -> None:
    tok = llama_tokenizer([])
    tok.chat_template = VICUNA_TEMPLATE
    model = LlamaForCausalLM(LlamaConfig(**_TEXT, **_token_ids(tok)))
    _save(model, [tok], path, tok.eos_token_id, tok.pad_token_id)


def _build_qwen2(path: Path) -> None:
    tok = qwen_tokenizer()
    tok.chat_template = CHATML_TEMPLATE
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    model = Qwen2ForCausalLM(Qwen2Config(**_TEXT, **_token_ids(tok)))
    _save(model, [tok], path, eos, tok.pad_token_id)


def _build_llava(path: Path) -> None:
    tok = llama_tokenizer(["<image>"])
    tok.chat_template = VICUNA_TEMPLATE
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32, initializer_range=_INIT_RANGE,
                              dtype="float32")  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**_TEXT, **_token_ids(tok)),
                         image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=16,
                         vision_feature_select_strategy="default", vision_feature_layer=-2, dtype="float32")  # fmt: skip
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=VICUNA_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)  # fmt: skip
    _save(LlavaForConditionalGeneration(config), [processor], path, tok.eos_token_id, tok.pad_token_id)


def _build_qwen2_vl(path: Path) -> None:
    tok = qwen_tokenizer()
    tok.chat_template = CHATML_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    head_dim = _TEXT["hidden_size"] // _TEXT["num_attention_heads"]
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(head_dim)}
    text = _TEXT | _token_ids(tok) | {"rope_parameters": rope}
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": _TEXT["hidden_size"], "num_heads": 2, "mlp_ratio": 2,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "initializer_range": _INIT_RANGE, "dtype": "float32"}  # fmt: skip
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], dtype="float32")  # fmt: skip
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHATML_TEMPLATE)  # fmt: skip
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    _save(Qwen2VLForConditionalGeneration(config), [processor], path, eos, ids["<|endoftext|>"])


def _mrope_section(head_dim: int) -> list[int]:
    """Split the head_dim/2 rotary frequencies over (temporal, height, width) like Qwen2-VL's 16/24/24."""
    half = head_dim // 2
    t = half // 4
    return [t, (half - t) // 2, half - t - (half - t) // 2]


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "llava": _build_llava, "qwen2_vl": _build_qwen2_vl, "llama": _build_llama, "qwen2": _build_qwen2,
}  # fmt: skip


def build_checkpoint(kind: str, path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Build the ``kind`` checkpoint (model, tokenizer, processor) into ``path`` and return it."""
    if kind not in _BUILDERS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {KINDS}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _BUILDERS[kind](out)
    return out


def ensure_checkpoint(kind: str, root: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Return ``root/kind``, building it first unless a complete build with ``seed`` is already there.

    Builds go to a temporary sibling directory that is renamed into place after the marker
    file is written, so an interrupted build is never mistaken for a complete one.
    """
    target = Path(root) / kind
    marker = {"kind": kind, "seed": seed}
    if _read_marker(target) == marker:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=target.parent))
    try:
        build_checkpoint(kind, tmp, seed=seed)
        (tmp / MARKER).write_text(json.dumps(marker))
        if _read_marker(target) == marker:  # another process finished first
            return target
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def make_test_image(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Deterministic RGB image (width, height) = ``size``: a gradient with random shapes."""
    rng = random.Random(seed)
    width, height = size
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randint(4, max(5, width // 2)), y0 + rng.randint(4, max(5, height // 2)))
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    return image
