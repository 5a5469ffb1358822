"""vLLM's engine arguments, as Tandem's flags set them.

``VllmOptions`` is built once from ``LlmConfig`` (``from_config``) and turned into the keyword
arguments of ``vllm.AsyncEngineArgs`` (``engine_kwargs``) when the engine starts. Tandem's own
flags map onto vLLM's names (``--context-length`` is ``max_model_len``, ``--max-batch-size``
``max_num_seqs``, ``--max-batch-size`` + ``--max-queue`` ``max_num_queued_reqs``, the prefix
cache ``enable_prefix_caching``); ``--vllm-arg KEY=VALUE`` sets any other argument, and wins
over Tandem's choice for the same key. Nothing here imports vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GiB = 2**30
CPU_KV_CACHE_BYTES = 2 * GiB
"""KV cache of vLLM's CPU build unless ``--vllm-arg kv_cache_memory_bytes=...`` says otherwise
(on CPU vLLM otherwise reserves ``gpu_memory_utilization`` of the machine's RAM, 90 %)."""
CPU_BLOCK_SIZE = 32
"""KV block size of vLLM's CPU build unless ``--vllm-arg block_size=...`` says otherwise. Its
prefix cache reuses whole blocks only, and its own CPU default (128) drops up to 127 positions of
every hit: with a LLaVA-1.5 image (576 or, at 224 px, 196 positions) followed by a new question,
most of the image's span was prefilled again. 32 is the smallest size the CPU attention kernels
take without a warning (multiples of 32); measured: a repeated image's TTFT 195 ms instead of
~500 ms, tokens/s unchanged or better (bench/README.md, run 7). GPUs keep vLLM's default (16)."""
FIXED = frozenset({"model", "tokenizer", "enable_mm_embeds", "skip_tokenizer_init"})
"""Engine arguments Tandem must set itself: the checkpoint, and embeddings-in (no tower)."""


def parse_engine_args(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> {key: value}; values are JSON when they parse (numbers, booleans,
    objects), strings otherwise; ``-`` in keys reads as ``_`` (``max-num-batched-tokens``)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--vllm-arg {item!r}: expected KEY=VALUE (e.g. max_num_batched_tokens=2048)")
        if key in FIXED:
            raise ValueError(f"--vllm-arg {key}: Tandem sets it itself")
        if key == "max_model_len":
            raise ValueError("--vllm-arg max_model_len: use --context-length (it is vLLM's max_model_len)")
        try:
            parsed[key] = json.loads(raw)
        except ValueError:
            parsed[key] = raw
    return parsed


@dataclass(frozen=True)
class VllmOptions:
    """What the vLLM engine is started with (see the module docstring).

    ``embed_only`` lists the modalities whose items arrive as embeddings: their per-prompt limit
    is 0, so vLLM neither loads nor runs their encoder tower. ``gpu_memory_utilization`` 0 keeps
    vLLM's default; ``extra`` holds the ``--vllm-arg`` pairs.
    """

    model: str
    context_length: int
    max_batch_size: int
    max_queue: int
    dtype: str = "auto"
    prefix_caching: bool = True
    gpu_memory_utilization: float = 0.0
    tensor_parallel_size: int = 1
    embed_only: tuple[str, ...] = ()
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.context_length < 2:
            raise ValueError(f"{self.context_length=} must be >= 2")
        if self.max_batch_size < 1:
            raise ValueError(f"{self.max_batch_size=} must be >= 1")
        if self.max_queue < 0:
            raise ValueError(f"{self.max_queue=} must be >= 0")
        if not 0 <= self.gpu_memory_utilization <= 1:
            raise ValueError(f"{self.gpu_memory_utilization=} must be in [0, 1] (0: vLLM's default)")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"{self.tensor_parallel_size=} must be >= 1")

    @property
    def max_requests(self) -> int:
        """Unfinished requests (running + waiting) beyond which vLLM refuses a new one."""
        return self.max_batch_size + self.max_queue

    def engine_kwargs(self, on_cpu: bool) -> dict[str, Any]:
        """Keyword arguments of ``vllm.AsyncEngineArgs``."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "tokenizer": self.model,
            "dtype": self.dtype,
            "max_model_len": self.context_length,
            "max_num_seqs": self.max_batch_size,
            "max_num_queued_reqs": self.max_requests,
            "enable_prefix_caching": self.prefix_caching,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enable_mm_embeds": True,
            "disable_log_stats": True,
        }
        if self.embed_only:
            kwargs["limit_mm_per_prompt"] = dict.fromkeys(self.embed_only, 0)
        if self.gpu_memory_utilization:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        if on_cpu:
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
            kwargs["block_size"] = CPU_BLOCK_SIZE
        return kwargs | dict(self.extra)
