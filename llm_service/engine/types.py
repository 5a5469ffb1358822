"""The engine's contract: what a model adapter provides, what a request carries, what comes back.

Adapters (``llm_service.adapters``) implement ``LanguageModel`` and build ``EngineRequest``s;
the servicer consumes ``TokenEvent``s. Nothing here knows about protos or model families.
``FinishReason`` and ``Usage`` are the shared wire values of ``tandem.wire.types``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tandem.errors import TandemError
from tandem.wire.types import FinishReason as FinishReason
from tandem.wire.types import Usage as Usage

MIN_TEMPERATURE = 0.01
"""A temperature in (0, MIN_TEMPERATURE) is raised to it (vLLM's rule): dividing float32 scores by
a tinier one overflows to infinity, and sampling that sharp is greedy in all but name."""
DEFAULT_PREFIX_CACHE_BYTES = 512 * 2**20
"""The prefix cache's default bound (512 MiB of KV)."""
REPETITION_PENALTY_RANGE = (0.01, 10.0)
"""Accepted repetition penalties (the HTTP API's range): far outside it, penalised scores
overflow float32 or vanish, and no model is usable with such values anyway."""


class GenerationFailed(TandemError):
    """One request's generation failed on its own (its sampling or its text); INTERNAL.

    The scheduler delivers it to that request alone: the rest of the batch keeps streaming.
    """


class LanguageModel(Protocol):
    """The language half of a model, as the engine drives it (one thread calls it at a time).

    ``forward`` takes ``inputs_embeds`` [B, L, H], ``position_ids`` [B, L] (``position_dims`` 1)
    or [3, B, L] (3, Qwen2-VL M-RoPE), ``attention_mask`` [B, past + L] (1 real, 0 padding) and
    a transformers ``Cache`` (or None); it returns the logits of the last position [B, V] and the
    updated cache. The engine keeps sequences left-padded in one batched ``DynamicCache``.
    A model whose requests carry ``attention_blocks`` also takes ``blocks`` [B, past + L] on a
    prefill forward: each column's block number, -1 outside blocks (``llm_service.masks``).
    A model whose requests carry ``layer_inputs`` [L, K, H] gets them on a prefill forward packed
    after the embeddings: ``inputs_embeds`` [B, L, (1 + K) * H] (``prefill.padded_inputs``).
    """

    dtype: torch.dtype
    device: torch.device
    hidden_size: int
    vocab_size: int
    position_dims: int

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [L] -> embeddings [L, H] (the model's input embedding table)."""
        ...

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values: Any | None,
    ) -> tuple[torch.Tensor, Any]:
        """One forward pass; returns (logits of the last position [B, V], cache)."""
        ...

    def new_cache(self) -> Any:
        """An empty ``DynamicCache`` for this model."""
        ...


@dataclass(frozen=True)
class SamplingConfig:
    """Per-request decoding parameters; temperature 0 means greedy (top_p/top_k then unused).

    Values that cannot be computed are refused (``ValueError``) or, for a tiny temperature,
    made computable: a temperature in (0, ``MIN_TEMPERATURE``) becomes ``MIN_TEMPERATURE``, as in
    vLLM; the request still samples (with its seed), it is not turned into greedy decoding. The
    repetition penalty must lie in ``REPETITION_PENALTY_RANGE``, top_p in (0, 1], top_k >= 0.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # the model's end-of-sequence ids do not end generation (vLLM's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.max_new_tokens < 1:
            raise ValueError(f"{self.max_new_tokens=} must be >= 1")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"{self.temperature=} must be a finite number >= 0")
        if 0 < self.temperature < MIN_TEMPERATURE:
            object.__setattr__(self, "temperature", MIN_TEMPERATURE)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{self.top_p=} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"{self.top_k=} must be >= 0 (0 disables top-k)")
        low, high = REPETITION_PENALTY_RANGE
        if not low <= self.repetition_penalty <= high:  # NaN fails too
            raise ValueError(f"{self.repetition_penalty=} must be between {low} and {high}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"{self.seed=} must be in [0, 2**63)")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids must be non-negative integers")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class PromptImage:
    """One image of a prompt, for an engine that takes token ids plus image embeddings (vLLM):
    its first row, Tandem's image id, its features [num_tokens, H] and its patch grid, if any."""

    start: int
    image_id: str
    features: torch.Tensor
    grid_thw: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"PromptImage(start={self.start}, image={self.image_id[:12]}, rows={len(self.features)})"


@dataclass
class EngineRequest:
    """One generation: a prompt already merged into embeddings by the model adapter.

    ``prompt_keys`` has one key per prompt position (the token id, or a negative key derived
    from (image_id, offset) at image positions); the prefix cache matches by it.
    ``prompt_token_ids`` holds the token ids (placeholder id at image positions) for the
    repetition penalty. ``position_ids`` is [position_dims, L]; the first generated token sits
    at ``next_position`` (all dims) and each later one at +1. ``images`` lists the prompt's
    images for an engine that embeds the prompt itself (vLLM); ``inputs_embeds`` is then empty.
    """

    request_id: str
    prompt_keys: list[int]
    prompt_token_ids: list[int]
    inputs_embeds: torch.Tensor
    position_ids: torch.Tensor
    next_position: int
    sampling: SamplingConfig
    image_tokens: int = 0
    # Prompt ranges [start, end) whose positions attend to each other both ways during prefill
    # (Gemma 3's images); the rest is causal. A prefill chunk never ends inside one.
    attention_blocks: tuple[tuple[int, int], ...] = ()
    # What prefill adds to the output of decoder layers 0..K-1 at each prompt row, [L, K, H]
    # (Qwen3-VL's deepstack features; zeros at text rows); None for most requests.
    layer_inputs: torch.Tensor | None = None
    session_id: str | None = None  # for the logs: KV reuse goes by content (prefix_cache.py)
    tenant: str = ""  # who asked: fair batch slots (``FairQueue``), its own prefix-cache blocks
    images: tuple[PromptImage, ...] = ()

    def __repr__(self) -> str:
        return (
            f"EngineRequest(request_id={self.request_id!r}, prompt_len={len(self.prompt_keys)}, "
            f"image_tokens={self.image_tokens}, session={self.session_id is not None}, "
            f"sampling={self.sampling!r})"
        )


class TokenEngine(Protocol):
    """What the worker and its app call on an engine: ``llm_service.engine.Engine``, or
    ``llm_service.vllm_engine.VllmEngine`` (``--engine vllm``)."""

    def start(self) -> None:
        """Make ``generate`` work (may block: run it off the event loop)."""
        ...

    def stop(self) -> None:
        """End every request (``Unavailable``) and release the model."""
        ...

    def warmup(self) -> None:
        """Run a dummy generation through the engine (blocking)."""
        ...

    def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]:
        """Stream ``request``'s events; closing the stream early cancels the request."""
        ...

    def failure(self) -> str | None:
        """Why the engine can serve nothing any more (it died), else ``None``; cheap, polled."""
        ...


@dataclass(frozen=True)
class TokenEvent:
    """What one engine step produced for a request: new token ids and the text now safe to show.

    ``text`` may be empty (held back: an incomplete UTF-8 character or a possible stop-string
    prefix). The last event of a request has ``finish_reason`` and ``usage`` set.
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None

    def __repr__(self) -> str:
        return (
            f"TokenEvent(tokens={len(self.token_ids)}, text_len={len(self.text)}, "
            f"finish_reason={self.finish_reason!r}, usage={self.usage!r})"
        )


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Scheduler limits.

    ``max_batch_size`` sequences decode together; at most ``max_queue`` wait for a slot (more is
    ``Overloaded``); prompt + max_new_tokens must fit ``context_length``; at most
    ``max_prefill_tokens`` prompt positions are prefilled between two decode steps (a longer
    prompt is prefilled in chunks over several steps: this bounds the stall running streams
    see); the prefix cache keeps up to ``prefix_cache_bytes`` of KV for reuse by later requests
    of the same tenant, in blocks of ``prefix_block_size`` positions (0 bytes disables it); while
    another tenant waits, one tenant runs at most ``max_running_per_tenant`` sequences (0: one
    less than the batch, so another tenant always finds a slot).
    """

    context_length: int
    max_batch_size: int = 16
    max_queue: int = 64
    max_prefill_tokens: int = 512
    prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES
    prefix_block_size: int = 16
    max_running_per_tenant: int = 0

    @property
    def tenant_cap(self) -> int:
        """Sequences one tenant may run while another tenant waits."""
        return self.max_running_per_tenant or max(1, self.max_batch_size - 1)

    def __post_init__(self) -> None:
        if self.context_length < 2:
            raise ValueError(f"{self.context_length=} must be >= 2")
        if self.max_batch_size < 1:
            raise ValueError(f"{self.max_batch_size=} must be >= 1")
        if self.max_queue < 0:
            raise ValueError(f"{self.max_queue=} must be >= 0")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"{self.max_prefill_tokens=} must be >= 1")
        if self.max_running_per_tenant < 0:
            raise ValueError(f"{self.max_running_per_tenant=} must be >= 0 (0: max_batch_size - 1)")
        if self.prefix_cache_bytes < 0:
            raise ValueError(f"{self.prefix_cache_bytes=} must be >= 0 (0 disables KV reuse)")
        if self.prefix_block_size < 1:
            raise ValueError(f"{self.prefix_block_size=} must be >= 1")
