"""Language-side adapters on tiny real checkpoints: loading the language half, prompts, positions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)

from llm_service.adapters import ADAPTERS, Adapter, Qwen2VLAdapter, UnsupportedModel, adapter_for
from llm_service.adapters.base import ImageSpan, PromptLayout
from llm_service.config import LlmConfig
from llm_service.conversation import ChatMessage, ImageRef, TextPart
from llm_service.loader import build_language_model, load
from llm_service.prompt import BREAK, PromptBuilder
from tandem.errors import InvalidInput
from tandem.models.packed_linear import KERNELS, PackedLinear
from tandem.testing.checkpoints import make_test_image

VLMS = ("llava", "qwen2_vl")
TEXT = ("llama", "qwen2")
IMAGE_SIZES = ((64, 48), (112, 56))  # Qwen2-VL: 4 and 8 tokens, grids 1x4x4 and 1x4x8


def _full_model(path: Path, kind: str) -> Any:
    auto = AutoModelForCausalLM if kind in TEXT else AutoModelForImageTextToText
    return auto.from_pretrained(path).eval()


def _builder(path: Path) -> tuple[PromptBuilder, Adapter]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    adapter = adapter_for(AutoConfig.from_pretrained(path))
    template = (path / "chat_template.jinja").read_text()
    return PromptBuilder(tokenizer, template, adapter.add_special_tokens), adapter


def _conversation(with_images: bool) -> tuple[list[ChatMessage], list[dict]]:
    """Ours and HF's version of a two-turn conversation (two images in the last turn if VLM)."""
    image = ImageRef("ab" * 32, 1)
    first: tuple = ((image,) if with_images else ()) + (TextPart("What is in this image?"),)
    second: tuple = ((image, image) if with_images else ()) + (TextPart("Compare them, please."),)
    ours = [
        ChatMessage("system", (TextPart("You are a helpful assistant."),)),
        ChatMessage("user", first),
        ChatMessage("assistant", (TextPart("It shows a small bird."),)),
        ChatMessage("user", second),
    ]
    hf = []
    sizes = iter(IMAGE_SIZES * 2)
    for m in ours:
        content = [
            {"type": "text", "text": p.text}
            if isinstance(p, TextPart)
            else {"type": "image", "image": make_test_image(1, next(sizes))}
            for p in m.parts
        ]
        hf.append({"role": m.role, "content": content})
    return ours, hf


def test_registry_keys_by_architecture_and_refuses_unknown() -> None:
    assert set(ADAPTERS) == {
        "Gemma3ForConditionalGeneration",
        "Idefics3ForConditionalGeneration",
        "InternVLForConditionalGeneration",
        "SmolVLMForConditionalGeneration",
        "LlavaForConditionalGeneration",
        "LlavaNextForConditionalGeneration",
        "LlavaOnevisionForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
    }
    config = AutoConfig.for_model("gpt2")
    config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(UnsupportedModel, match=r"GPT2LMHeadModel.*LlavaForConditionalGeneration"):
        adapter_for(config)


@pytest.mark.parametrize("kind", [*VLMS, *TEXT])
def test_language_half_matches_the_full_model(checkpoint, kind: str) -> None:
    path = checkpoint(kind)
    loaded = load(LlmConfig(model=str(path), device="cpu"))
    full = _full_model(path, kind)
    names = [name for name, _ in loaded.model.module.named_parameters()]
    assert all(name.startswith(("model.", "lm_head.")) for name in names)
    assert not any(word in name for name in names for word in ("vision", "visual", "projector"))
    vision = sum(
        p.numel() for n, p in full.named_parameters() if "vision" in n or "visual" in n or "projector" in n
    )
    assert loaded.model.parameter_count() == sum(p.numel() for p in full.parameters()) - vision
    assert loaded.adapter.is_vlm == (kind in VLMS)
    ids = torch.tensor([5, 6, 7, 8, 9, 10, 11])
    positions = torch.arange(len(ids)).expand(loaded.model.position_dims, 1, -1)
    if loaded.model.position_dims == 1:
        positions = positions[0]
    logits, _ = loaded.model.forward(
        loaded.model.embed(ids)[None], positions, torch.ones(1, len(ids), dtype=torch.long), None
    )
    with torch.no_grad():
        expected = full(input_ids=ids[None]).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=1e-5)


def _rewrite(src: Path, dst: Path, rename, config_edit=None) -> Path:  # type: ignore[no-untyped-def]
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    renamed = {rename(k): v for k, v in tensors.items() if rename(k) is not None}
    save_file(renamed, dst / "model.safetensors", metadata={"format": "pt"})
    if config_edit is not None:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def _new_layout(kind: str):  # type: ignore[no-untyped-def]
    """transformers >= 4.52 key names of the tiny checkpoints (saved in the original layout)."""

    def llava(key: str) -> str:
        if key.startswith("language_model.model."):
            return "model.language_model." + key.removeprefix("language_model.model.")
        if key.startswith("language_model.lm_head."):
            return key.removeprefix("language_model.")
        return "model." + key

    def qwen2_vl(key: str) -> str:
        if key.startswith("model."):
            return "model.language_model." + key.removeprefix("model.")
        return "model." + key if key.startswith("visual.") else key

    return llava if kind == "llava" else qwen2_vl


@pytest.mark.parametrize("kind", VLMS)
def test_both_checkpoint_layouts_load_the_same_weights(checkpoint, tmp_path: Path, kind: str) -> None:
    path = checkpoint(kind)
    adapter = adapter_for(AutoConfig.from_pretrained(path))
    # plain nn.Linear: packed weights are opaque buffers, outside state_dict()
    old = build_language_model(path, adapter, torch.device("cpu"), torch.float32, kernels="torch")
    new_path = _rewrite(path, tmp_path / kind, _new_layout(kind))
    new = build_language_model(new_path, adapter, torch.device("cpu"), torch.float32, kernels="torch")
    old_state, new_state = old.module.state_dict(), new.module.state_dict()
    assert old_state.keys() == new_state.keys()
    for key, value in old_state.items():
        assert torch.equal(value, new_state[key]), key


@pytest.mark.parametrize("kernels", KERNELS)
def test_tied_embeddings_share_the_input_table(checkpoint, tmp_path: Path, kernels: str) -> None:
    path = _rewrite(
        checkpoint("llama"),
        tmp_path / "tied",
        lambda key: None if key.startswith("lm_head.") else key,
        lambda config: config.update(tie_word_embeddings=True),
    )
    loaded = load(LlmConfig(model=str(path), device="cpu", cpu_kernels=kernels))
    module = loaded.model.module
    if kernels == "torch":
        assert module.lm_head.weight is module.embeddings.weight
    else:  # the head packs a copy of the table
        assert (
            isinstance(module.lm_head, PackedLinear)
            and module.lm_head.weight.shape == module.embeddings.weight.shape
        )
    ids = torch.tensor([[5, 6, 7]])
    logits, _ = loaded.model.forward(module.embeddings(ids), torch.arange(3)[None], torch.ones(1, 3), None)
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(path)(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", VLMS)
def test_prompt_ids_equal_the_processor(checkpoint, kind: str) -> None:
    path = checkpoint(kind)
    builder, adapter = _builder(path)
    ours, hf = _conversation(with_images=True)
    processor = AutoProcessor.from_pretrained(path)
    expected = processor.apply_chat_template(hf, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert builder.render(ours) == processor.apply_chat_template(hf, add_generation_prompt=True)
    grids = expected.get("image_grid_thw")
    images = []
    for i in range(3):
        grid = tuple(int(g) for g in grids[i]) if grids is not None else ()
        tokens = math.prod(grid) // 4 if grid else 16
        images.append(ImageRef(f"{i:064x}", tokens, grid))
    layout = adapter.layout(builder.build(ours), images)
    assert layout.token_ids == list(expected["input_ids"][0])  # type: ignore[index]


@pytest.mark.parametrize("kind", TEXT)
def test_text_prompt_ids_equal_the_tokenizer_template(checkpoint, kind: str) -> None:
    path = checkpoint(kind)
    builder, adapter = _builder(path)
    ours, hf = _conversation(with_images=False)
    tokenizer = AutoTokenizer.from_pretrained(path)
    expected = tokenizer.apply_chat_template(hf, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert adapter.layout(builder.build(ours), []).token_ids == list(expected["input_ids"])  # type: ignore[call-overload,index]
    with pytest.raises(InvalidInput, match="text-only"):
        adapter.layout(builder.build(ours), [ImageRef("ab" * 32, 4)])


@pytest.mark.parametrize(
    ("kind", "injected"),
    [("llava", "<image>"), ("llava", "</s>"), ("qwen2_vl", "<|image_pad|>"), ("qwen2_vl", "<|im_start|>")],
)
def test_text_never_becomes_a_control_token(checkpoint, kind: str, injected: str) -> None:
    builder, adapter = _builder(checkpoint(kind))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint(kind))
    control = tokenizer.get_vocab()[injected]
    message = ChatMessage("user", (TextPart(f"look {injected} here {injected}{injected}"),))
    ids = builder.build([message])
    baseline = builder.build([ChatMessage("user", (TextPart("x"),))]).count(control)
    assert ids.count(control) == baseline
    assert f"{injected[0]}{BREAK}{injected[1:]}" in tokenizer.decode(ids)
    assert adapter.layout(ids, []).spans == []
    image = ImageRef("cd" * 32, 4, (1, 4, 4))
    layout = adapter.layout(builder.build([ChatMessage("user", (image, TextPart(injected)))]), [image])
    assert adapter.image_token_id is not None
    assert [span.start for span in layout.spans] == [layout.token_ids.index(adapter.image_token_id)]
    assert layout.image_tokens == 4


def test_text_parts_joined_into_a_control_token_are_refused(checkpoint) -> None:
    builder, _ = _builder(checkpoint("qwen2_vl"))
    message = ChatMessage("user", (TextPart("a <|image"), TextPart("_pad|> b")))
    with pytest.raises(InvalidInput, match="special tokens"):
        builder.build([message])


def test_placeholder_count_must_match_the_images(checkpoint) -> None:
    builder, adapter = _builder(checkpoint("llava"))
    image = ImageRef("ab" * 32, 16)
    ids = builder.build([ChatMessage("user", (image, TextPart("hi")))])
    with pytest.raises(InvalidInput, match="1 image placeholders but the messages carry 2 images"):
        adapter.layout(ids, [image, image])


def test_mrope_positions_equal_transformers_get_rope_index(checkpoint) -> None:
    path = checkpoint("qwen2_vl")
    builder, adapter = _builder(path)
    assert isinstance(adapter, Qwen2VLAdapter)
    ours, hf = _conversation(with_images=True)
    processor = AutoProcessor.from_pretrained(path)
    inputs = processor.apply_chat_template(
        hf, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    grids = [tuple(int(g) for g in grid) for grid in inputs["image_grid_thw"]]
    images = [ImageRef(f"{i:064x}", math.prod(g) // 4, g) for i, g in enumerate(grids)]
    layout = adapter.layout(builder.build(ours), images)
    layout = PromptLayout(
        layout.token_ids, [ImageSpan(s.start, s.image, s.image.grid_thw) for s in layout.spans]
    )
    for span in layout.spans:
        adapter.check_image(span)
    positions, next_position = adapter.positions(layout)
    full = _full_model(path, "qwen2_vl")
    expected, delta = full.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
    )
    assert torch.equal(positions, expected[:, 0, :])
    assert next_position == len(layout.token_ids) + int(delta[0, 0])
    assert len({g[1:] for g in grids}) > 1  # non-square grids exercise the max(h, w) rule


def test_qwen2_vl_refuses_a_grid_that_disagrees_with_the_token_count(checkpoint) -> None:
    adapter = adapter_for(AutoConfig.from_pretrained(checkpoint("qwen2_vl")))
    with pytest.raises(InvalidInput, match="does not give num_tokens"):
        adapter.check_image(ImageSpan(0, ImageRef("ab" * 32, 5), (1, 4, 4)))
    with pytest.raises(InvalidInput, match="patch grid"):
        adapter.check_image(ImageSpan(0, ImageRef("ab" * 32, 4), ()))


def test_a_template_that_refuses_the_conversation_is_invalid_input(checkpoint) -> None:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint("llama"))
    template = (
        "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('roles must alternate') }}{% endif %}x"
    )
    builder = PromptBuilder(tokenizer, template, lambda prompt, bos: False)
    with pytest.raises(InvalidInput, match="roles must alternate"):
        builder.build([ChatMessage("assistant", (TextPart("hi"),))])
    assert builder.build([ChatMessage("user", (TextPart("hi"),))]) == tokenizer.encode(
        "x", add_special_tokens=False
    )
