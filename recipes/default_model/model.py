"""The default model's architecture, tokenizer and processor (built untrained; ``train`` fits it).

``LlavaForConditionalGeneration``: a 3-layer CLIP vision tower (hidden 128; 64x64 input, 32x32
patches -- the quadrants of ``scenes`` -- so an image is 4 tokens) whose last layer feeds the
2-layer GELU projector, and a 4-layer Llama (hidden 160, 5 heads). About 2.5M parameters, 5 MB in
float16. The tokenizer is Llama-2 style (Metaspace BPE with byte fallback, ``<s>``/``</s>``,
``<image>``, ``<pad>``) trained on the question/answer corpus of ``data``,
so every word the model knows is a single token; the chat template is Vicuna-style with the
question before the images (see ``CHAT_TEMPLATE``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jinja2
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from recipes.default_model.data import corpus
from recipes.default_model.scenes import GRID, IMAGE_SIZE
from tandem.testing.checkpoints import TOKENIZER_KWARGS

IMAGE_TOKEN = "<image>"
# Vicuna-style turns ("USER: ... ASSISTANT: ...</s>"), but a user turn's text comes before its
# images. In a causal model the image tokens then see the question: each can tell "I am the
# square it asks about" by itself, and the answer only has to find the token that says so. With
# the images first, a tiny model must match the question against every image token at the
# answer, which it learns far more slowly (it guesses among the shapes present).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% set parts = [{'type': 'text', 'text': m['content']}] if m['content'] is string else m['content'] %}"
    "{% set text = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') %}"
    "{% if m['role'] == 'system' %}{{ text }} "
    "{% elif m['role'] == 'user' %}USER: {{ text }}"
    "{% for p in parts if p['type'] == 'image' %}<image>{% endfor %}"
    " {% else %}ASSISTANT: {{ text }}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
PATCH = IMAGE_SIZE // GRID
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
CHAT_LINES = ("You are a helpful assistant.", "Hello! What is in this picture?")


@dataclass(frozen=True)
class Architecture:
    """Sizes of the two towers; the defaults are the shipped model's."""

    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 160
    text_layers: int = 4
    text_heads: int = 5
    text_kv_heads: int = 5
    text_intermediate: int = 448
    max_positions: int = 512
    rope_theta: float = 10000.0


def tokenizer_corpus() -> list[str]:
    """``data.corpus()`` rendered with the chat template (``<image>`` dropped), plus a few chat lines."""
    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    chats = [template.render(messages=chat).replace(IMAGE_TOKEN, "") for chat in corpus()]
    return [*chats, *CHAT_LINES]


def build_tokenizer() -> LlamaTokenizer:
    """Llama-2 layout (<unk>=0, <s>=1, </s>=2, bytes, BPE, <image>, <pad>) trained on ``tokenizer_corpus()``.

    Training splits off punctuation and newlines, so "circle" is one token whether a "?" or "."
    follows; the saved tokenizer is the stock Llama one (Metaspace, no split), which applies the
    same merges.
    """
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m if isinstance(m, list) else m.split(" ")) for m in model["merges"]]
    kwargs = {"add_bos_token": True, **TOKENIZER_KWARGS}
    out = LlamaTokenizer(vocab=model["vocab"], merges=merges, extra_special_tokens=[IMAGE_TOKEN], **kwargs)
    out.add_special_tokens({"pad_token": "<pad>"})
    out.chat_template = CHAT_TEMPLATE
    return out


def build_processor(tokenizer: LlamaTokenizer) -> LlavaProcessor:
    """CLIP preprocessing to ``IMAGE_SIZE`` pixels; ``<image>`` expands to ``IMAGE_TOKENS`` tokens."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLS, which the "default" strategy drops
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer: LlamaTokenizer, arch: Architecture) -> LlavaConfig:
    """The LLaVA config of ``arch`` for ``tokenizer``'s vocabulary."""
    vision = CLIPVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=4 * arch.vision_hidden,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=arch.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_kv_heads,
        max_position_embeddings=arch.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta},
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=int(tokenizer.get_vocab()[IMAGE_TOKEN]),
        image_seq_length=IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )


def build_model(tokenizer: LlamaTokenizer, arch: Architecture) -> LlavaForConditionalGeneration:
    """A freshly initialised model (seed torch first) with a greedy, short generation config."""
    model = LlavaForConditionalGeneration(build_config(tokenizer, arch))
    model.generation_config = generation_config(tokenizer)
    return model


def generation_config(tokenizer: Any) -> GenerationConfig:
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
