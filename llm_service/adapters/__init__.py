"""The explicit registry of language-side adapters, keyed by Hugging Face ``architectures[0]``."""

from __future__ import annotations

from typing import Any

from llm_service.adapters.base import Adapter, ImageSpan, PromptLayout
from llm_service.adapters.llava import LlavaAdapter
from llm_service.adapters.qwen2_vl import Qwen2VLAdapter
from llm_service.adapters.text import TextAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    name: cls for cls in (LlavaAdapter, Qwen2VLAdapter, TextAdapter) for name in cls.architectures
}


class UnsupportedModel(ValueError):
    """The checkpoint's architecture has no language-side adapter."""


def adapter_for(config: Any) -> Adapter:
    """The adapter of ``config.architectures[0]``; ``UnsupportedModel`` lists the supported ones."""
    architectures = getattr(config, "architectures", None) or []
    name = architectures[0] if architectures else "<none>"
    cls = ADAPTERS.get(name)
    if cls is None:
        supported = ", ".join(sorted(ADAPTERS))
        raise UnsupportedModel(
            f"unsupported architecture {name!r}; the language service supports: {supported}"
        )
    return cls(config)


__all__ = ["ADAPTERS", "Adapter", "ImageSpan", "PromptLayout", "UnsupportedModel", "adapter_for"]
