"""What the vLLM-engine tests share: a language worker on vLLM, and Hugging Face's answers.

``vllm_worker`` builds the worker exactly as ``python -m llm_service --engine vllm`` does
(``build_vllm_worker``), starts vLLM with the CPU-friendly test arguments and stops it at the
end. ``HFOracle`` is the reference: the full checkpoint in transformers (float32) computes the
image features Tandem's vision service would write, and ``generate()``'s greedy tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from llm_service.config import LlmConfig
from llm_service.conversation import ChatMessage, GenerationRequest, TextPart
from llm_service.engine import SamplingConfig, TokenEvent
from llm_service.vllm_engine.loader import build_vllm_worker
from llm_service.worker import LanguageWorker
from tandem.embeddings import record
from tandem.metrics import Metrics
from tandem.testing.checkpoints import make_test_image
from tandem.wire.types import ImageRef

# Eager mode (no torch.compile: seconds, not minutes, to start on 2 cores) and 256 MiB of KV cache;
# the blocks are Tandem's CPU default of 32 positions (short test prompts fill whole cached blocks).
ENGINE_ARGS = ("enforce_eager=true", f"kv_cache_memory_bytes={256 * 2**20}")
N = 12  # new tokens per answer


@contextlib.asynccontextmanager
async def vllm_worker(path: Path, **options: Any) -> AsyncIterator[LanguageWorker]:
    """A started, warmed-up worker on vLLM for ``path``; vLLM is shut down at the end."""
    settings: dict[str, Any] = {"dtype": "float32", "max_batch_size": 4, "max_queue": 2} | options
    config = LlmConfig(model=str(path), engine="vllm", vllm_arg=ENGINE_ARGS, **settings)
    worker = await asyncio.to_thread(build_vllm_worker, config, None, Metrics())
    await asyncio.to_thread(worker.engine.start)
    try:
        await worker.warmup()
        yield worker
    finally:
        await asyncio.to_thread(worker.engine.stop)


def picture(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    return make_test_image(seed, size)


def image_id(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return hashlib.sha256(out.getvalue()).hexdigest()


Turn = tuple[str, Sequence[str | Image.Image]]  # (role, parts)


@dataclass
class HFOracle:
    """The full checkpoint in transformers: image features and greedy ``generate()`` tokens."""

    model: Any
    processor: Any

    @classmethod
    def load(cls, path: Path) -> HFOracle:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
        return cls(model, AutoProcessor.from_pretrained(path))

    def inputs(self, conversation: Sequence[Turn]) -> Any:
        messages = [{"role": role, "content": [_hf_part(p) for p in parts]} for role, parts in conversation]
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )

    def generate(self, conversation: Sequence[Turn], max_new_tokens: int = N) -> list[int]:
        inputs = self.inputs(conversation)
        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]

    def image_ref(self, image: Image.Image, fingerprint: str) -> ImageRef:
        """The reference the gateway would send: the image's id and its inline embedding record."""
        inputs = self.processor.image_processor(images=[image], return_tensors="pt")
        grid = inputs.get("image_grid_thw")
        with torch.no_grad():
            args = (inputs["pixel_values"],) if grid is None else (inputs["pixel_values"], grid)
            out = self.model.get_image_features(*args)
        features = _rows(out)
        grid_thw = [] if grid is None else [int(v) for v in grid[0]]
        key = image_id(image)
        header, raw = record.make_header(
            fingerprint=fingerprint, image_id=key, tensor=features, grid_thw=grid_thw
        )
        return ImageRef(key, features.shape[0], tuple(grid_thw), record.encode(header, raw))


def _rows(out: Any) -> torch.Tensor:
    """One image's feature rows [num_tokens, H], whatever shape ``get_image_features`` returns."""
    features = getattr(out, "pooler_output", out)
    if isinstance(features, (list, tuple)):
        features = features[0]
    return features.reshape(-1, features.shape[-1]).contiguous()


def _hf_part(part: str | Image.Image) -> dict[str, Any]:
    return {"type": "text", "text": part} if isinstance(part, str) else {"type": "image", "image": part}


def tandem_request(
    oracle: HFOracle,
    worker: LanguageWorker,
    conversation: Sequence[Turn],
    request_id: str,
    sampling: SamplingConfig | None = None,
    tenant: str = "",
) -> GenerationRequest:
    """The request the gateway would send for ``conversation`` (images as inline records)."""
    fingerprint = worker.features.fingerprint
    messages = tuple(
        ChatMessage(
            role,
            tuple(TextPart(p) if isinstance(p, str) else oracle.image_ref(p, fingerprint) for p in parts),
        )  # type: ignore[arg-type]
        for role, parts in conversation
    )
    return GenerationRequest(
        request_id, messages, sampling or SamplingConfig(max_new_tokens=N), tenant=tenant
    )


async def collect(stream: AsyncIterator[TokenEvent]) -> list[TokenEvent]:
    return [event async for event in stream]


def tokens(events: Sequence[TokenEvent]) -> list[int]:
    return [t for event in events for t in event.token_ids]
