"""Tiny checkpoints from tandem.testing.checkpoints load and run through the real Auto* classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from tandem.testing.checkpoints import (
    MARKER,
    build_checkpoint,
    ensure_checkpoint,
    llama_tokenizer,
    make_test_image,
    qwen_tokenizer,
)

VLMS = ("llava", "qwen2_vl")
TEXT_ONLY = ("llama", "qwen2")
IMAGE_TOKEN = {"llava": "<image>", "qwen2_vl": "<|image_pad|>"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


def _messages(n_images: int) -> list[dict[str, Any]]:
    images = [{"type": "image"} for _ in range(n_images)]
    return [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [*images, {"type": "text", "text": "What is in this image?"}]},
    ]


def _expected_image_tokens(kind: str, model: Any, inputs: Any) -> int:
    if kind == "llava":  # a fixed 4x4 patch grid per image
        return int(model.config.image_seq_length) * len(inputs["pixel_values"])
    merge = model.config.vision_config.spatial_merge_size
    return int(inputs["image_grid_thw"].prod(-1).sum()) // merge**2


def test_unknown_kind_lists_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="qwen2_vl"):
        build_checkpoint("gpt5", tmp_path)
    with pytest.raises(ValueError, match="llava"):
        ensure_checkpoint("gpt5", tmp_path)


@pytest.mark.parametrize("kind", VLMS)
@pytest.mark.parametrize("n_images", [1, 2])
def test_vlm_generates_with_images(root: Path, kind: str, n_images: int) -> None:
    path = ensure_checkpoint(kind, root)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.dtype == torch.float32 and not model.training

    text = processor.apply_chat_template(_messages(n_images), add_generation_prompt=True, tokenize=False)
    assert text.count(IMAGE_TOKEN[kind]) == n_images and "Be brief." in text
    images = [make_test_image(seed) for seed in range(n_images)]
    inputs = processor(text=text, images=images, return_tensors="pt")

    image_token_id = model.config.image_token_id
    assert image_token_id == processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN[kind])
    n_tokens = int((inputs["input_ids"] == image_token_id).sum())
    per_image = 16 if kind == "llava" else 4
    assert n_tokens == _expected_image_tokens(kind, model, inputs) == n_images * per_image

    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert 0 < out.shape[1] - inputs["input_ids"].shape[1] <= 5


@pytest.mark.parametrize("kind", VLMS)
def test_get_image_features(root: Path, kind: str) -> None:
    path = ensure_checkpoint(kind, root)
    processor = AutoProcessor.from_pretrained(path)
    model: Any = AutoModelForImageTextToText.from_pretrained(path)
    images = [make_test_image(0), make_test_image(1, size=(100, 60))]
    pixels = processor.image_processor(images=images, return_tensors="pt")
    extra = {"image_grid_thw": pixels["image_grid_thw"]} if kind == "qwen2_vl" else {}
    with torch.no_grad():
        features = model.get_image_features(pixel_values=pixels["pixel_values"], **extra).pooler_output
    hidden = model.config.get_text_config().hidden_size
    expected = [16, 16] if kind == "llava" else [4, 8]  # qwen2_vl: 56x56 -> 2x2, 112x56 -> 4x2 merged
    assert [tuple(f.shape) for f in features] == [(n, hidden) for n in expected]


def test_multi_turn_templates(root: Path) -> None:
    turns = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "More?"}]},
    ]
    llava = AutoProcessor.from_pretrained(ensure_checkpoint("llava", root))
    text = llava.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    assert text == "USER: <image>\nHi ASSISTANT: A cat.</s>USER: More? ASSISTANT:"
    qwen = AutoProcessor.from_pretrained(ensure_checkpoint("qwen2_vl", root))
    text = qwen.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n" in text
    assert text.endswith(
        "assistant\nA cat.<|im_end|>\n<|im_start|>user\nMore?<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("kind", TEXT_ONLY)
def test_text_only_generates(root: Path, kind: str) -> None:
    path = ensure_checkpoint(kind, root)
    config = AutoConfig.from_pretrained(path)
    assert getattr(config, "vision_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, how are you"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert 0 < out.shape[1] - inputs["input_ids"].shape[1] <= 5
    assert model.config.vocab_size == len(tokenizer)
    eos = model.generation_config.eos_token_id
    assert tokenizer.eos_token_id == (eos[0] if isinstance(eos, list) else eos)


@pytest.mark.parametrize("kind", [*VLMS, *TEXT_ONLY])  # families: tandem/testing/families
def test_saved_config_and_tokenizer(root: Path, kind: str) -> None:
    path = ensure_checkpoint(kind, root)
    config = json.loads((path / "config.json").read_text())
    text_config = config.get("text_config", config)
    assert config["dtype"] == text_config["dtype"] == "float32"
    assert ("vision_config" in config) == (kind in VLMS)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert text_config["vocab_size"] == len(tokenizer)
    assert tokenizer.pad_token_id is not None and tokenizer.chat_template and tokenizer.padding_side == "left"
    # Reloading (llava comes back as a plain TokenizersBackend) encodes exactly like the built tokenizer.
    built: TokenizersBackend
    if kind in ("llava", "llama"):
        built = llama_tokenizer(["<image>"] if kind == "llava" else [])
    else:
        built = qwen_tokenizer()
    sample = "USER: What is in this image? Über 42 café!\n<|im_end|> </s>"
    assert tokenizer(sample)["input_ids"] == built(sample)["input_ids"]
    assert tokenizer.decode(tokenizer(sample, add_special_tokens=False)["input_ids"]) == sample


def test_builds_are_deterministic(tmp_path: Path) -> None:
    first = load_file(build_checkpoint("llava", tmp_path / "a") / "model.safetensors")
    second = load_file(build_checkpoint("llava", tmp_path / "b") / "model.safetensors")
    other = load_file(build_checkpoint("llava", tmp_path / "c", seed=1) / "model.safetensors")
    assert first.keys() == second.keys() == other.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    for name in ("tokenizer.json", "config.json", "processor_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_ensure_checkpoint_reuses_and_repairs(tmp_path: Path) -> None:
    path = ensure_checkpoint("qwen2", tmp_path)
    assert path == tmp_path / "qwen2" and (path / MARKER).is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_checkpoint("qwen2", tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt

    (path / MARKER).unlink()  # looks half-written: rebuilt
    (path / "model.safetensors").write_bytes(b"truncated")
    ensure_checkpoint("qwen2", tmp_path)
    assert (path / MARKER).is_file() and len(load_file(path / "model.safetensors")) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["qwen2"]  # no temporary directories left


def test_make_test_image() -> None:
    image = make_test_image()
    assert image.mode == "RGB" and image.size == (64, 48)
    assert image.tobytes() == make_test_image().tobytes() != make_test_image(1).tobytes()
    assert len(set(image.getdata())) > 10  # has visible content
    assert make_test_image(size=(30, 20)).size == (30, 20)
