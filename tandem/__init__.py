"""Tandem: serve vision-language models as three gRPC services (vision, language, gateway).

``from tandem import pipeline, GenerationConfig`` gives the Python client; it is imported lazily
so ``import tandem`` stays light (no grpc, torch or Pillow until the client is used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tandem.client import AsyncPipeline, GenerationConfig, Pipeline, pipeline

__all__ = ["AsyncPipeline", "GenerationConfig", "Pipeline", "pipeline"]

_CLIENT_EXPORTS = frozenset(__all__)


def __getattr__(name: str) -> Any:
    """Lazy client exports (PEP 562)."""
    if name in _CLIENT_EXPORTS:
        from tandem import client

        return getattr(client, name)
    raise AttributeError(f"module 'tandem' has no attribute {name!r}")
