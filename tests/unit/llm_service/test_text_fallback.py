"""The registry's fallback: any text-only ``*ForCausalLM`` is served by ``TextAdapter``; a
checkpoint that cannot be served is refused at start-up with the reason."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoConfig

from llm_service.adapters import TextAdapter, UnsupportedModel, adapter_for
from llm_service.adapters import text as text_adapter


def config(model_type: str, architecture: str, **extra: Any) -> Any:
    out = AutoConfig.for_model(model_type, **extra)
    out.architectures = [architecture]
    return out


@pytest.mark.parametrize(
    ("model_type", "architecture"),
    [
        ("mistral", "MistralForCausalLM"),
        ("gemma", "GemmaForCausalLM"),
        ("gemma2", "Gemma2ForCausalLM"),
        ("phi3", "Phi3ForCausalLM"),
        ("qwen3", "Qwen3ForCausalLM"),
        ("llama", "LlamaForCausalLM"),
    ],
)
def test_text_only_decoders_get_the_text_adapter(model_type: str, architecture: str) -> None:
    adapter = adapter_for(config(model_type, architecture))
    assert type(adapter) is TextAdapter and not adapter.is_vlm


@pytest.mark.parametrize(
    ("model_type", "architecture", "reason"),
    [
        ("gpt2", "GPT2LMHeadModel", r"not a \*ForCausalLM"),
        ("bart", "BartForCausalLM", "encoder-decoder"),
        ("t5", "T5ForConditionalGeneration", r"not a \*ForCausalLM"),
        ("roberta", "RobertaForCausalLM", "an encoder"),
    ],
)
def test_what_cannot_be_served_says_why(model_type: str, architecture: str, reason: str) -> None:
    with pytest.raises(UnsupportedModel, match=rf"{architecture}.*({reason}).*LlavaForConditionalGeneration"):
        adapter_for(config(model_type, architecture))


def test_a_vision_config_without_an_adapter_is_refused() -> None:
    vlm = config("llama", "LlamaVisionForCausalLM")
    vlm.vision_config = {"hidden_size": 8}
    with pytest.raises(UnsupportedModel, match="vision tower"):
        adapter_for(vlm)


def test_a_decoder_without_inputs_embeds_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class IdsOnly:
        def forward(self, input_ids: Any) -> Any: ...

    monkeypatch.setattr(text_adapter, "_decoder_class", lambda model_type: IdsOnly)
    with pytest.raises(UnsupportedModel, match=r"IdsOnly\.forward takes no inputs_embeds"):
        adapter_for(config("mistral", "MistralForCausalLM"))


def test_an_unknown_model_type_is_refused() -> None:
    odd = config("mistral", "OddForCausalLM")
    odd.model_type = "odd"
    with pytest.raises(UnsupportedModel, match="does not load model_type 'odd'"):
        adapter_for(odd)
