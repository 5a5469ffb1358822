"""Tiny text-only decoders beyond Llama/Qwen2, each in its real HF ``*ForCausalLM`` class.

They are served by the language service's generic text adapter (no family code), so their
checkpoints exercise what differs between decoders: Mistral (a 16-token sliding window, which
the test prompts exceed), Gemma (embeddings scaled by sqrt(hidden) inside its embedding module,
tied LM head, two end-of-turn ids), Phi-3 (fused qkv / gate_up projections) and Qwen3 (q/k
norms). Their chat templates cover both content formats: Mistral, Gemma and Phi-3 render
``message['content']`` as a string (as the real instruct templates do), Qwen3's ChatML template
iterates over OpenAI-style parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedModel,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tandem.testing.checkpoints import CHATML_TEMPLATE, _save, _text_config, llama_tokenizer, qwen_tokenizer

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% elif message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
)
HEAD_DIM = 16


def _llama_style(
    path: Path,
    specials: Sequence[str],
    template: str,
    model: Any,
    config: Any,
    eos: Sequence[str],
    **extra: Any,
) -> None:
    tok = llama_tokenizer(list(specials))
    tok.chat_template = template
    built: PreTrainedModel = model(config(**_text_config(tok, **extra)))
    _save(built, tok, path, [tok.get_vocab()[t] for t in eos])


def build_mistral(path: Path) -> None:
    """MistralForCausalLM, Metaspace tokenizer, ``[INST]`` string-content template."""
    _llama_style(path, [], MISTRAL_TEMPLATE, MistralForCausalLM, MistralConfig, ["</s>"], sliding_window=16)


def build_gemma(path: Path) -> None:
    """GemmaForCausalLM (scaled embeddings, tied head), ``<start_of_turn>`` string template."""
    specials = ["<start_of_turn>", "<end_of_turn>"]
    extra = {"head_dim": HEAD_DIM, "tie_word_embeddings": True, "hidden_activation": "gelu_pytorch_tanh"}
    _llama_style(
        path, specials, GEMMA_TEMPLATE, GemmaForCausalLM, GemmaConfig, ["</s>", "<end_of_turn>"], **extra
    )


def build_phi3(path: Path) -> None:
    """Phi3ForCausalLM (fused projections), ``<|user|> ... <|end|>`` string template."""
    specials = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    _llama_style(path, specials, PHI3_TEMPLATE, Phi3ForCausalLM, Phi3Config, ["</s>", "<|end|>"])


def build_qwen3(path: Path) -> None:
    """Qwen3ForCausalLM (q/k norms), byte-level tokenizer, ChatML parts-content template."""
    tok = qwen_tokenizer()
    tok.chat_template = CHATML_TEMPLATE
    eos = [tok.get_vocab()[token] for token in ("<|im_end|>", "<|endoftext|>")]
    _save(Qwen3ForCausalLM(Qwen3Config(**_text_config(tok, head_dim=HEAD_DIM))), tok, path, eos)
