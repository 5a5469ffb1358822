"""The explicit registry of language-side adapters, keyed by Hugging Face ``architectures[0]``."""

from __future__ import annotations

from typing import Any

from llm_service.adapters.base import Adapter, ImageSpan, PromptLayout
from llm_service.adapters.gemma3 import Gemma3Adapter
from llm_service.adapters.idefics3 import Idefics3Adapter
from llm_service.adapters.internvl import InternVLAdapter
from llm_service.adapters.llava import LlavaAdapter
from llm_service.adapters.llava_next import LlavaNextAdapter
from llm_service.adapters.llava_onevision import LlavaOnevisionAdapter
from llm_service.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from llm_service.adapters.qwen2_vl import Qwen2VLAdapter
from llm_service.adapters.qwen3_vl import Qwen3VLAdapter
from llm_service.adapters.smolvlm import SmolVLMAdapter
from llm_service.adapters.text import TextAdapter, text_only_refusal

ADAPTERS: dict[str, type[Adapter]] = {
    name: cls
    for cls in (
        Gemma3Adapter,
        Idefics3Adapter,
        InternVLAdapter,
        LlavaAdapter,
        LlavaNextAdapter,
        LlavaOnevisionAdapter,
        Qwen2VLAdapter,
        Qwen2_5_VLAdapter,
        Qwen3VLAdapter,
        SmolVLMAdapter,
        TextAdapter,
    )
    for name in cls.architectures
}


class UnsupportedModel(ValueError):
    """The checkpoint's architecture has no language-side adapter."""


def adapter_for(config: Any) -> Adapter:
    """The adapter of ``config.architectures[0]``: a registered one, else ``TextAdapter`` for a
    text-only causal LM; ``UnsupportedModel`` says why not and lists the supported ones."""
    architectures = getattr(config, "architectures", None) or []
    name = architectures[0] if architectures else "<none>"
    cls = ADAPTERS.get(name)
    if cls is not None:
        return cls(config)
    reason = text_only_refusal(config, name)
    if reason is None:
        return TextAdapter(config)
    supported = ", ".join(sorted(ADAPTERS))
    raise UnsupportedModel(
        f"unsupported architecture {name!r} ({reason}); the language service supports: {supported}, "
        "and any text-only *ForCausalLM that AutoModelForCausalLM loads and whose forward takes "
        "inputs_embeds"
    )


__all__ = ["ADAPTERS", "Adapter", "ImageSpan", "PromptLayout", "UnsupportedModel", "adapter_for"]
