"""``ModelInfo``: what a deployment serves, as the language service reports it (``vlm.v1.ModelInfo``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    """The served model: its name, architecture, modality, cache fingerprint and context length."""

    model: str
    architecture: str
    is_vlm: bool
    fingerprint: str
    context_length: int
