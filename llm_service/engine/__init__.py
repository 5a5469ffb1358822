"""The language worker's generation engine: continuous batching, sampling, KV reuse, streaming.

``Engine`` is the entry point; ``types`` holds the contract with the model adapters
(``LanguageModel``, ``EngineRequest``) and the servicer (``TokenEvent``, ``Usage``).
"""

from llm_service.engine.engine import Engine
from llm_service.engine.types import (
    EngineConfig,
    EngineRequest,
    FinishReason,
    GenerationFailed,
    LanguageModel,
    SamplingConfig,
    TokenEvent,
    Usage,
)

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineRequest",
    "FinishReason",
    "GenerationFailed",
    "LanguageModel",
    "SamplingConfig",
    "TokenEvent",
    "Usage",
]
