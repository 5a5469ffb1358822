"""Random-weight checkpoints at the shapes of published models, for benchmarks (``tandem bench
checkpoint``). The compute of a forward pass is the same as with trained weights; nothing is
downloaded.

Shapes:

- ``llava-1.5-smol``: LLaVA-1.5 layout (``LlavaForConditionalGeneration``): CLIP ViT-B/16 at
  224 px (196 image tokens, CLS dropped, features of the second-to-last layer) + 2-layer GELU
  projector + a SmolLM2-135M-shaped Llama (hidden 576, 30 layers, 9 heads, 3 KV heads,
  intermediate 1536, vocab 49152, tied embeddings). ChatML template, ``<image>`` placeholder.
- ``qwen2-vl-2b``: Qwen2-VL-2B-Instruct's shape (``Qwen2VLForConditionalGeneration``): 32-block
  ViT (1280 wide, patch 14, 2x2 merge) + a 1.5B Qwen2 (hidden 1536, 28 layers, 12 heads, 2 KV
  heads, intermediate 8960, vocab 151936, M-RoPE, tied embeddings); the hub's processor limits.
- ``smolvlm-256m``: SmolVLM-256M-Instruct's shape (``SmolVLMForConditionalGeneration``): SigLIP-
  style ViT-B/16 at 512 px + pixel-shuffle connector (scale 4: 64 tokens per tile) + the
  SmolLM2-135M-shaped Llama (vocab 49280). Image splitting is off (one 512 px tile per image;
  the hub config splits large images into 512 px tiles plus a global one): edit
  ``preprocessor_config.json`` to turn it on.

Every checkpoint has random bf16 weights from a fixed torch seed, a byte-level BPE tokenizer
trained here on generated words up to the model's exact vocabulary size (so every token id the
model can emit decodes), its chat template, the processor and a generation config, saved with
``save_pretrained``. The weights are then written in the hub layout that vLLM and older
transformers expect: transformers 5 saves a LLaVA CLIP tower as ``vision_tower.*``, the hub
(llava-hf) as ``vision_tower.vision_model.*``; the other two already save in their hub layout.
transformers maps the hub layout back when loading, and so does Tandem.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.bench.dataset import WORDS

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' or p['type'] == 'image_url' %}{{ IMAGE }}"
    "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLVLM_CHAT = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}"
    "{% if m['content'] is string %}: {{ m['content'] }}{% else %}"
    "{% if m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' or p['type'] == 'image_url' %}<image>"
    "{% elif p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
SMOL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_SPECIALS += ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
SMOLVLM_SPECIALS = [*SMOL_SPECIALS, "<fake_token_around_image>", "<image>", "<global-img>"]
SMOLVLM_SPECIALS += ["<end_of_utterance>", *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]


@dataclass(frozen=True)
class Scale:
    """Overrides for small test builds; ``None`` keeps the published value."""

    layers: int | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.layers is not None and self.layers < 1:
            raise ValueError(f"{self.layers=} must be >= 1")
        if self.vocab_size is not None and self.vocab_size < 600:
            raise ValueError(f"{self.vocab_size=} must be >= 600 (bytes, specials and some merges)")

    def of(self, layers: int) -> int:
        return self.layers or layers

    def vocab(self, size: int) -> int:
        return self.vocab_size or size


@dataclass(frozen=True)
class Shape:
    """One published shape: a one-line summary and the function that writes it into a folder."""

    summary: str
    build: Callable[[Path, Scale], None]


def build(
    shape: str, out: str | Path, *, seed: int = 0, layers: int | None = None, vocab_size: int | None = None
) -> Path:
    """Write the ``shape`` checkpoint into ``out`` (created); returns its path."""
    import torch

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {sorted(SHAPES)}")
    scale = Scale(layers, vocab_size)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        SHAPES[shape].build(path, scale)
    return path


def train_tokenizer(vocab_size: int, specials: list[str], seed: int = 0) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` of exactly ``vocab_size`` tokens: ``specials``
    first, the 256 byte symbols, merges learnt from generated words, then ``<|reserved_N|>``
    tokens if the corpus ran out of merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_corpus(max(20_000, 6 * vocab_size), seed), trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    return tok


def _corpus(words: int, seed: int) -> Iterator[str]:
    """Lines of 20 generated words with English-like letter frequencies (seeded), after lines of
    the benchmark's prompt words and chat roles (so each of those is one token)."""
    rng = random.Random(f"tandem-bench-tokenizer:{seed}")
    common = [*WORDS, *(w.capitalize() for w in WORDS), "user", "assistant", "system", "User", "Assistant"]
    for _ in range(2000):
        yield " ".join(rng.choices(common, k=20)) + "."
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    for _ in range(0, words, 20):
        yield " ".join("".join(rng.choices(letters, weights, k=rng.randint(2, 12))) for _ in range(20))


def _hf_tokenizer(tok: Any, template: str, **specials: str | None) -> Any:
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=32768, **specials)
    wrapped.chat_template = template
    return wrapped


def smollm2_text(scale: Scale, vocab: int, tok: Any, eos: str, tie: bool = True) -> dict[str, Any]:
    """The text config of SmolLM2-135M (a Llama), with this tokenizer's special ids."""
    return {
        "model_type": "llama", "vocab_size": scale.vocab(vocab), "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": scale.of(30), "num_attention_heads": 9,
        "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}, "hidden_act": "silu",
        "tie_word_embeddings": tie, "bos_token_id": tok.token_to_id("<|im_start|>"),
        "eos_token_id": tok.token_to_id(eos), "pad_token_id": tok.token_to_id("<|endoftext|>"),
        "dtype": "bfloat16",
    }  # fmt: skip


def _model(cls: Any, config: Any) -> Any:
    import torch

    config.dtype = torch.bfloat16
    return cls._from_config(config, dtype=torch.bfloat16).eval()


def _save(model: Any, processor: Any, path: Path, eos: list[int], pad: int) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    model.save_pretrained(path)
    processor.save_pretrained(path)


def _build_llava(path: Path, scale: Scale) -> None:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = train_tokenizer(scale.vocab(49152), [*SMOL_SPECIALS, "<image>"])
    template = CHATML.replace("{{ IMAGE }}", "<image>\n")
    hf_tok = _hf_tokenizer(tok, template, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)
    hf_tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=scale.of(12), num_attention_heads=12,
        image_size=224, patch_size=16, projection_dim=512, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    text = LlamaConfig(**smollm2_text(scale, 49152, tok, "<|im_end|>"))
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.token_to_id("<image>"),
        image_seq_length=196, vision_feature_select_strategy="default", vision_feature_layer=-2,
        projector_hidden_act="gelu", tie_word_embeddings=True,
    )  # fmt: skip
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
            image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        tokenizer=hf_tok, patch_size=16, vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1, chat_template=template,
    )  # fmt: skip
    model = _model(LlavaForConditionalGeneration, config)
    _save(model, processor, path, [tok.token_to_id("<|im_end|>")], tok.token_to_id("<|endoftext|>"))
    rename_keys(path, {"vision_tower.": "vision_tower.vision_model."}, keep="vision_tower.vision_model.")


def _build_qwen2_vl(path: Path, scale: Scale) -> None:
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = train_tokenizer(scale.vocab(151936), QWEN_SPECIALS)
    ids = {token: tok.token_to_id(token) for token in QWEN_SPECIALS}
    template = CHATML.replace("{{ IMAGE }}", "<|vision_start|><|image_pad|><|vision_end|>")
    hf_tok = _hf_tokenizer(tok, template, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None)
    text = {
        "vocab_size": scale.vocab(151936), "hidden_size": 1536, "intermediate_size": 8960,
        "num_hidden_layers": scale.of(28), "num_attention_heads": 12, "num_key_value_heads": 2,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"], "dtype": "bfloat16",
    }  # fmt: skip
    vision = {
        "depth": scale.of(32), "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": 1536,
        "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    }  # fmt: skip
    config = Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
    )  # fmt: skip
    pixels: dict[str, Any] = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=hf_tok, chat_template=template,
    )  # fmt: skip
    model = _model(Qwen2VLForConditionalGeneration, config)
    _save(model, processor, path, [ids["<|im_end|>"], ids["<|endoftext|>"]], ids["<|endoftext|>"])


def _build_smolvlm(path: Path, scale: Scale) -> None:
    from transformers import (
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    tok = train_tokenizer(scale.vocab(49280), SMOLVLM_SPECIALS)
    hf_tok = _hf_tokenizer(
        tok, SMOLVLM_CHAT, eos_token="<end_of_utterance>", pad_token="<|endoftext|>", unk_token=None
    )
    hf_tok.add_special_tokens({"additional_special_tokens": SMOLVLM_SPECIALS[3:]})
    vision = {
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": scale.of(12),
        "num_attention_heads": 12, "patch_size": 16, "image_size": 512,
    }  # fmt: skip
    text = smollm2_text(scale, 49280, tok, "<end_of_utterance>", tie=False)
    config = SmolVLMConfig(
        text_config=text, vision_config=vision, scale_factor=4, image_token_id=tok.token_to_id("<image>"),
        tie_word_embeddings=False,
    )  # fmt: skip
    image_processor = SmolVLMImageProcessor(
        do_image_splitting=False, size={"longest_edge": 512}, max_image_size={"longest_edge": 512}
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor, video_processor=SmolVLMVideoProcessor(), tokenizer=hf_tok,
        image_seq_len=64, chat_template=SMOLVLM_CHAT,
    )  # fmt: skip
    model = _model(SmolVLMForConditionalGeneration, config)
    _save(model, processor, path, [tok.token_to_id("<end_of_utterance>")], tok.token_to_id("<|endoftext|>"))


def rename_keys(path: Path, prefixes: dict[str, str], keep: str) -> None:
    """Rewrite the safetensors keys of ``path``: a key starting with a prefix of ``prefixes``
    (but not with ``keep``, the target layout) gets that prefix replaced. Shard index included."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    def renamed(key: str) -> str:
        if key.startswith(keep):
            return key
        for old, new in prefixes.items():
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as reader:
            metadata = reader.metadata() or {"format": "pt"}
            tensors = {renamed(key): reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118
        save_file(tensors, str(file), metadata=metadata)
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {renamed(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n")


SHAPES: dict[str, Shape] = {
    "llava-1.5-smol": Shape("LLaVA-1.5 layout, CLIP ViT-B/16 @224 + SmolLM2-135M-shaped Llama", _build_llava),
    "qwen2-vl-2b": Shape("Qwen2-VL-2B-Instruct shape (675M ViT + 1.5B Qwen2)", _build_qwen2_vl),
    "smolvlm-256m": Shape("SmolVLM-256M shape, ViT-B/16 @512 + pixel shuffle + SmolLM2-135M", _build_smolvlm),
}
