"""What ``tandem up --model`` detected: the architecture, its adapter, VLM or text-only.

Printed when ``tandem up`` starts, so a new checkpoint shows at once which family serves it; a
checkpoint no adapter serves is a ``ConfigError`` here, with the language service's reason,
before anything starts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from tandem.cli.services import ConfigError


@dataclass(frozen=True)
class ModelFamily:
    """The family the language service will serve a checkpoint as."""

    architecture: str
    adapter: str
    vlm: bool

    def __str__(self) -> str:
        kind = "VLM" if self.vlm else "text-only"
        return f"{self.architecture} (adapter {self.adapter}, {kind})"


def detect_family(model: str) -> ModelFamily | None:
    """The family of ``model``; None when the language service is not installed here."""
    try:
        adapters = importlib.import_module("llm_service.adapters")
    except ImportError:
        return None
    from transformers import AutoConfig

    from tandem.models.checkpoint import resolve

    try:
        adapter = adapters.adapter_for(AutoConfig.from_pretrained(resolve(model)))
    except (OSError, ValueError) as exc:  # UnsupportedModel is a ValueError
        raise ConfigError(str(exc)) from exc
    return ModelFamily(str(adapter.config.architectures[0]), type(adapter).__name__, bool(adapter.is_vlm))
