"""Tiny random checkpoints in real Hugging Face classes, for tests, benchmarks and demos.

Each checkpoint is written with ``save_pretrained`` (model, generation config, tokenizer, and the
processor for VLMs), so it loads back through the same ``Auto*.from_pretrained(path)`` code path as
a hub checkpoint. Weights are random float32 from a fixed torch seed, so two builds are identical;
tokenizers are BPE models trained here on a small generated English corpus. Nothing is downloaded.

* ``"llava"``: LLaVA-1.5 layout. ``LlavaForConditionalGeneration`` = 2-layer CLIP vision tower
  (32 px crop, patch 8) + MLP projector + 2-layer Llama; ``LlavaProcessor`` with
  ``CLIPImageProcessor``. ``<image>`` expands to 16 tokens for every image (4x4 patches, CLS
  dropped by the "default" feature strategy). Vicuna template:
  ``"{system} USER: <image>\\n{text} ASSISTANT: {answer}</s>USER: ... ASSISTANT:"``.
* ``"qwen2_vl"``: ``Qwen2VLForConditionalGeneration`` (2-layer vision tower, patch 14, merge 2,
  2-layer text model) with the real ``Qwen2VLProcessor``. Images are resized to between 56x56
  and 112x112 pixels, so one costs (h/28)*(w/28) = 4..16 ``<|image_pad|>`` tokens (4 for
  ``make_test_image()``). ChatML template; an image part renders as
  ``<|vision_start|><|image_pad|><|vision_end|>``.
* ``"llama"``: text-only ``LlamaForCausalLM``; same tokenizer (without ``<image>``) and template
  as llava.
* ``"qwen2"``: text-only ``Qwen2ForCausalLM``; same tokenizer and ChatML template as qwen2_vl.
* ``"llava_next"``: LLaVA-NeXT, any-resolution tiles (``tandem/testing/families/llava_next.py``).
* ``"qwen2_5_vl"``: Qwen2.5-VL, windowed vision attention (``tandem/testing/families/qwen2_5_vl.py``).
* ``"gemma3"``: Gemma 3, SigLIP + pooled projector, sliding layers (``tandem/testing/families/gemma3.py``).
* ``"smolvlm"``: SmolVLM, pixel-shuffle connector, image tiles (``tandem/testing/families/smolvlm.py``).
* ``"idefics3"``: ``"smolvlm"`` in Idefics3's classes (``tandem/testing/families/idefics3.py``).
* ``"llava_onevision"``: LLaVA-OneVision, two ways per image (``tandem/testing/families/llava_onevision.py``).
* ``"internvl"``: InternVL, pixel unshuffle + MLP projector, tiles (``tandem/testing/families/internvl.py``).
* ``"qwen3_vl"``: Qwen3-VL, deepstack features into early layers (``tandem/testing/families/qwen3_vl.py``).

Llama-family tokenizers are ``LlamaTokenizer`` (Metaspace BPE with byte fallback, as Llama-2 /
Vicuna); Qwen ones are byte-level ``Qwen2Tokenizer``. The ``seed`` only changes the weights.
"""

from __future__ import annotations

import contextlib
import importlib
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

KINDS: tuple[str, ...] = ("llava", "qwen2_vl", "llama", "qwen2", "llava_next", "qwen2_5_vl")
KINDS += ("mistral", "gemma", "phi3", "qwen3")  # text-only decoders: families/text_decoders.py
KINDS += ("gemma3",)
KINDS += ("smolvlm", "idefics3", "llava_onevision", "internvl")
KINDS += ("qwen3_vl",)
MARKER = ".tandem-checkpoint.json"

HIDDEN, HEADS = 64, 4
INIT_RANGE = 0.15  # wider than the usual 0.02, so greedy decoding has no near-ties
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "intermediate_size": 2 * HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": HEADS,
    "num_key_value_heads": HEADS // 2,
    "max_position_embeddings": 1024,
    "initializer_range": INIT_RANGE,
    "tie_word_embeddings": False,
    "dtype": "float32",
}
# Left padding for batched generation; Llama-family tokenizers prepend <s> (Qwen has no BOS).
TOKENIZER_KWARGS: dict[str, Any] = {"padding_side": "left", "model_max_length": 1024}
QWEN_SPECIALS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_SPECIALS += ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

VICUNA_TEMPLATE = (
    "{% for m in messages %}"
    "{% set parts = [{'type': 'text', 'text': m['content']}] if m['content'] is string else m['content'] %}"
    "{% set text = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') %}"
    "{% if m['role'] == 'system' %}{{ text }} "
    "{% elif m['role'] == 'user' %}USER: {% for p in parts if p['type'] == 'image' %}<image>\n{% endfor %}"
    "{{ text }} {% else %}ASSISTANT: {{ text }}</s>{% endif %}"
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
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the cat|a dog|my friend|the model|this image|a small bird|the red car|our team|she|he",
    "sees|likes|describes|shows|paints|finds|reads|answers|builds|watches|holds",
    "a blue box|the green tree|two apples|the sky|a picture|the river|some text|a white house|the question",
    "| today| in the morning| near the water| very quickly| again| with care",
)
_CHAT_LINES = (
    "USER: What is in this image? ASSISTANT: It shows",
    "system\nuser\nassistant\n",
    "You are a helpful assistant.",
    "Hello, how are you? I am fine, thank you.",
)


def _corpus(n: int = 1500) -> list[str]:
    """Deterministic English sentences plus chat-template words, to train the tokenizers on."""
    rng = random.Random(1234)
    subjects, verbs, objects, tails = (words.split("|") for words in _WORDS)
    lines = []
    for i in range(n):
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}."
        lines.append(s.capitalize() + rng.choice(["", f" {rng.randint(0, 999)} items.", " Why? Because!"]))
        lines.append(_CHAT_LINES[i % len(_CHAT_LINES)])
    return lines


def _train_bpe(
    pre_tokenizer: Any, normalizer: Any, specials: list[str], vocab_size: int, alphabet: list[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a BPE model on ``_corpus()``; return its (vocab, merges)."""
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    return model["vocab"], [(a, b) for a, b in merges]


def llama_tokenizer(extra_special: list[str]) -> LlamaTokenizer:
    """Llama-2 style: <unk>=0, <s>=1, </s>=2, <0x00>..<0xFF>, BPE, then ``extra_special``, <pad>."""
    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    vocab, merges = _train_bpe(metaspace, None, specials, 700, [])
    kwargs = {"add_bos_token": True, **TOKENIZER_KWARGS}
    tok = LlamaTokenizer(vocab=vocab, merges=merges, extra_special_tokens=extra_special, **kwargs)
    tok.add_special_tokens({"pad_token": "<pad>"})  # <image> then <pad>, the order llava-hf uses
    return tok


def qwen_tokenizer() -> Qwen2Tokenizer:
    """Qwen2-VL style byte-level BPE, then the ChatML and vision special tokens in hub order."""
    backend = Qwen2Tokenizer().backend_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab, merges = _train_bpe(backend.pre_tokenizer, backend.normalizer, [], 600, alphabet)
    eot, rest = QWEN_SPECIALS[0], list(QWEN_SPECIALS[1:])
    kwargs: dict[str, Any] = {"merges": merges, "unk_token": None, "eos_token": eot, "pad_token": eot}
    tok = Qwen2Tokenizer(vocab=vocab, extra_special_tokens=rest, **kwargs, **TOKENIZER_KWARGS)
    tok.eos_token = "<|im_end|>"  # instruct checkpoints stop at the end of the assistant turn
    return tok


def _text_config(tok: TokenizersBackend, **extra: Any) -> dict[str, Any]:
    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    return TEXT_CONFIG | ids | {"pad_token_id": tok.pad_token_id} | extra


def _save(model: PreTrainedModel, saveable: Any, path: Path, eos: int | list[int]) -> None:
    text = model.config.get_text_config()
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=eos, pad_token_id=text.pad_token_id
    )
    model.save_pretrained(path)
    saveable.save_pretrained(path)


def _build_llama(path: Path) -> None:
    tok = llama_tokenizer([])
    tok.chat_template = VICUNA_TEMPLATE
    _save(LlamaForCausalLM(LlamaConfig(**_text_config(tok))), tok, path, tok.eos_token_id)


def _build_qwen2(path: Path) -> None:
    tok = qwen_tokenizer()
    tok.chat_template = CHATML_TEMPLATE
    eos = [tok.get_vocab()[token] for token in ("<|im_end|>", "<|endoftext|>")]
    _save(Qwen2ForCausalLM(Qwen2Config(**_text_config(tok))), tok, path, eos)


def _build_llava(path: Path) -> None:
    tok = llama_tokenizer(["<image>"])
    tok.chat_template = VICUNA_TEMPLATE
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=32, initializer_range=INIT_RANGE, dtype="float32",
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**_text_config(tok)), image_seq_length=16,
        image_token_index=tok.get_vocab()["<image>"], vision_feature_select_strategy="default",
        vision_feature_layer=-2, dtype="float32",
    )  # fmt: skip
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1, chat_template=VICUNA_TEMPLATE,  # +1 CLS, which "default" drops
    )  # fmt: skip
    _save(LlavaForConditionalGeneration(config), processor, path, tok.eos_token_id)


def qwen_vl_parts() -> tuple[Qwen2Tokenizer, dict[str, Any], list[int]]:
    """What the Qwen-VL kinds share: the tokenizer (ChatML template), the top-level config
    arguments but ``vision_config`` (M-RoPE text config, vision token ids) and the eos ids."""
    tok = qwen_tokenizer()
    tok.chat_template = CHATML_TEMPLATE
    ids = {token: tok.get_vocab()[token] for token in QWEN_SPECIALS}
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section(HIDDEN // HEADS)}
    config = {
        "text_config": _text_config(tok, rope_parameters=rope), "dtype": "float32",
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
    }  # fmt: skip
    return tok, config, [ids["<|im_end|>"], ids["<|endoftext|>"]]


def _build_qwen2_vl(path: Path) -> None:
    tok, config, eos = qwen_vl_parts()
    vision = {
        "depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": HIDDEN, "patch_size": 14,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "initializer_range": INIT_RANGE,
        "dtype": "float32",
    }  # fmt: skip
    pixels: dict[str, Any] = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tok, chat_template=CHATML_TEMPLATE,
    )  # fmt: skip
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(vision_config=vision, **config))
    _save(model, processor, path, eos)


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width): 128 -> [16, 24, 24] as in Qwen2-VL."""
    half = head_dim // 2
    t = half // 4
    return [t, (half - t) // 2, half - t - (half - t) // 2]


def _family(name: str) -> Callable[[Path], None]:
    """The ``build`` of ``tandem.testing.families.<name>``, imported on first use (it imports us)."""

    def build(path: Path) -> None:
        importlib.import_module(f"tandem.testing.families.{name}").build(path)

    return build


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "llava": _build_llava,
    "qwen2_vl": _build_qwen2_vl,
    "llama": _build_llama,
    "qwen2": _build_qwen2,
    "llava_next": _family("llava_next"),
    "qwen2_5_vl": _family("qwen2_5_vl"),
    **{kind: _family(kind) for kind in ("mistral", "gemma", "phi3", "qwen3")},
    "gemma3": _family("gemma3"),
    "qwen3_vl": _family("qwen3_vl"),
    "smolvlm": _family("smolvlm"),
    "idefics3": _family("idefics3"),
    "llava_onevision": _family("llava_onevision"),
    "internvl": _family("internvl"),
}


def _check_kind(kind: str) -> None:
    if kind not in _BUILDERS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {KINDS}")


def build_checkpoint(kind: str, path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Build the ``kind`` checkpoint into ``path`` (created if needed) and return ``path``."""
    _check_kind(kind)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        _BUILDERS[kind](out)
    return out


def ensure_checkpoint(kind: str, root: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Return ``root/kind``, building it first unless a complete build with ``seed`` is there.

    A build goes to a temporary sibling directory, gets its marker file last and is then renamed
    into place, so an interrupted build is never taken for a complete one: it is rebuilt.
    """
    _check_kind(kind)
    target = Path(root) / kind
    stamp = {"kind": kind, "seed": seed}
    if _read_marker(target) == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=target.parent))
    try:
        build_checkpoint(kind, tmp, seed=seed)
        (tmp / MARKER).write_text(json.dumps(stamp))
        tmp.chmod(0o755)  # mkdtemp makes it private
        if _read_marker(target) != stamp:
            shutil.rmtree(target, ignore_errors=True)
            with contextlib.suppress(OSError):  # another process renamed its build into place first
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
    """Deterministic RGB image of ``size`` = (width, height): a gradient with coloured shapes."""
    rng = random.Random(seed)
    width, height = size
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randint(4, max(5, width // 2)), y0 + rng.randint(4, max(5, height // 2)))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image
