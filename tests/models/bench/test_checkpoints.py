"""Benchmark checkpoints (``tandem bench checkpoint``) at a test size (1 layer, vocab 1024): the
published widths, the hub key layout, and a ``from_pretrained`` round trip that loads every
weight from the file (none missing, none initialised anew)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from tandem.bench.checkpoints import SHAPES, build, train_tokenizer
from tandem.cli import main

# shape -> (prefixes every saved key starts with, a saved key, its path in the loaded model)
LAYOUTS = {
    "llava-1.5-smol": (
        ("vision_tower.vision_model.", "multi_modal_projector.", "language_model.model."),
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "model.vision_tower.embeddings.patch_embedding.weight",
    ),
    "qwen2-vl-2b": (
        ("visual.", "model."),
        "visual.patch_embed.proj.weight",
        "model.visual.patch_embed.proj.weight",
    ),
    "smolvlm-256m": (
        ("model.vision_model.", "model.connector.", "model.text_model.", "lm_head."),
        "model.connector.modality_projection.proj.weight",
        "model.connector.modality_projection.proj.weight",
    ),
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    shape = request.param
    return shape, build(shape, tmp_path_factory.mktemp(shape), layers=1, vocab_size=1024)


def saved_keys(path: Path) -> list[str]:
    with safe_open(str(path / "model.safetensors"), "pt") as reader:
        return list(reader.keys())


def test_keys_are_in_the_hub_layout(built: tuple[str, Path]) -> None:
    shape, path = built
    prefixes, _, _ = LAYOUTS[shape]
    keys = saved_keys(path)
    assert keys and all(key.startswith(prefixes) for key in keys), sorted(keys)[:10]


def test_from_pretrained_loads_every_weight_from_the_file(built: tuple[str, Path]) -> None:
    shape, path = built
    _, saved, loaded_name = LAYOUTS[shape]
    model, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert model.dtype == torch.bfloat16
    with safe_open(str(path / "model.safetensors"), "pt") as reader:
        assert torch.equal(model.state_dict()[loaded_name], reader.get_tensor(saved))
    assert len(saved_keys(path)) + _tied(model) == len(model.state_dict())


def _tied(model: torch.nn.Module) -> int:
    """1 when the model's head is tied to its embeddings (then not stored), else 0."""
    head = model.get_output_embeddings().weight
    return int(head.data_ptr() == model.get_input_embeddings().weight.data_ptr())


def test_published_widths_and_exact_vocabulary(built: tuple[str, Path]) -> None:
    shape, path = built
    config = AutoConfig.from_pretrained(path)
    text = config.get_text_config()
    processor = AutoProcessor.from_pretrained(path)
    assert text.vocab_size == len(processor.tokenizer) == 1024
    assert text.num_hidden_layers == 1
    widths = {"llava-1.5-smol": (576, 9, 3, 1536), "qwen2-vl-2b": (1536, 12, 2, 8960)}
    widths["smolvlm-256m"] = widths["llava-1.5-smol"]
    heads = (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.intermediate_size)
    assert heads == widths[shape]


def test_the_processor_renders_an_image_turn(built: tuple[str, Path]) -> None:
    shape, path = built
    processor = AutoProcessor.from_pretrained(path)
    image = Image.new("RGB", (224, 224), (200, 30, 30))
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "hi"}]}
    ]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    image_token = AutoConfig.from_pretrained(path)
    image_id = getattr(image_token, "image_token_id", None) or image_token.image_token_index
    count = int((inputs["input_ids"] == image_id).sum())
    expected = {"llava-1.5-smol": 196, "qwen2-vl-2b": 64, "smolvlm-256m": 64}[shape]
    assert count == expected  # qwen: 224 px -> 16x16 patches -> 64 after the 2x2 merge


def test_tokenizer_has_exactly_the_vocabulary_and_the_specials_first() -> None:
    tok = train_tokenizer(800, ["<|endoftext|>", "<image>"])
    assert tok.get_vocab_size() == 800
    assert (tok.token_to_id("<|endoftext|>"), tok.token_to_id("<image>")) == (0, 1)
    assert tok.decode(tok.encode("the red house").ids) == "the red house"


def test_cli_builds_and_refuses_unknown_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "checkpoint", "--shape", "gpt-5", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "bench",
                "checkpoint",
                "--shape",
                "llava-1.5-smol",
                "--out",
                str(tmp_path / "c"),
                "--layers",
                "0",
            ]
        )
    assert exit_info.value.code == 2 and "layers" in capsys.readouterr().err
