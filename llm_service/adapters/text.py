"""Text-only causal LMs: any ``*ForCausalLM`` that ``AutoModelForCausalLM`` loads; images refused.

Llama and Qwen2 are registered by name; every other text-only decoder (Mistral, Gemma, Phi-3,
Qwen3, ...) reaches this adapter through ``text_only_refusal`` (the registry's fallback), which
says why a checkpoint cannot be served: it has a vision tower, is an encoder-decoder, is not a
causal LM that ``AutoModelForCausalLM`` maps, its decoder's ``forward`` takes no
``inputs_embeds`` (the engine feeds embeddings, never token ids), or it is an encoder used as a
decoder (BERT-like: transformers also maps it to a masked LM).

The prompt is tokenised as the tokenizer's own ``apply_chat_template`` does (no extra special
tokens: the template writes them), which is what ``generate`` users of these models get.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import transformers
from transformers.models.auto import modeling_auto

from llm_service.adapters.base import Adapter, PromptLayout
from llm_service.conversation import ImageRef
from tandem.errors import InvalidInput


class TextAdapter(Adapter):
    architectures = ("LlamaForCausalLM", "Qwen2ForCausalLM")
    is_vlm = False

    def add_special_tokens(self, prompt: str, bos_token: str | None) -> bool:
        return False

    def layout(self, token_ids: Sequence[int], images: Sequence[ImageRef]) -> PromptLayout:
        if images:
            name = self.config.architectures[0] if self.config.architectures else "this model"
            raise InvalidInput(
                f"{name} is a text-only model: remove the {len(images)} image(s) from the request"
            )
        return PromptLayout(list(token_ids), [])


def text_only_refusal(config: Any, architecture: str) -> str | None:
    """None when ``TextAdapter`` can serve ``config``; else why not, in a few words."""
    if not architecture.endswith("ForCausalLM"):
        return "not a *ForCausalLM architecture"
    if getattr(config, "vision_config", None) is not None:
        return "it has a vision tower (vision_config) but no vision adapter"
    if getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model (only decoder-only models are served)"
    model_type = str(getattr(config, "model_type", ""))
    if modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) is None:
        return f"AutoModelForCausalLM does not load model_type {model_type!r}"
    decoder = _decoder_class(model_type)
    if decoder is None:
        return f"transformers has no base model (AutoModel) for model_type {model_type!r}"
    if "inputs_embeds" not in inspect.signature(decoder.forward).parameters:
        return f"{decoder.__name__}.forward takes no inputs_embeds"
    if model_type in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return f"{model_type} is an encoder (BERT-like: a masked LM used as a decoder)"
    return None


def _decoder_class(model_type: str) -> type[Any] | None:
    name = modeling_auto.MODEL_MAPPING_NAMES.get(model_type)
    if not isinstance(name, str):
        return None
    return getattr(transformers, name, None)  # type: ignore[no-any-return]
