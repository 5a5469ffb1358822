"""An ``EngineRequest`` as vLLM takes it: a token prompt with image embeddings, and sampling.

The prompt is the request's token ids with each image's rows folded back into the one
placeholder token the chat template wrote (vLLM expands each placeholder to the rows of its
item itself, from the embedding's length); the images go as embeddings with
Tandem's image ids as their uuids (``VllmFamily.multi_modal``). The tenant is the prompt's
``cache_salt``: vLLM's prefix cache then reuses KV only between requests of one tenant, as
Tandem's own engine does. Text is detokenised by vLLM (special tokens skipped, stop strings cut
and held back while they may still match), deltas only.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from llm_service.engine.types import EngineRequest, SamplingConfig
from llm_service.vllm_engine.families import VllmFamily


def vllm_prompt(request: EngineRequest, family: VllmFamily, dtype: torch.dtype) -> dict[str, Any]:
    """vLLM's ``TokensPrompt`` for ``request`` (embeddings cast to the model's ``dtype``)."""
    prompt: dict[str, Any] = {"prompt_token_ids": folded_token_ids(request)}
    prompt |= family.multi_modal(request.images, dtype)
    if request.tenant:
        prompt["cache_salt"] = request.tenant
    return prompt


def folded_token_ids(request: EngineRequest) -> list[int]:
    """The prompt's token ids with each image's placeholder rows folded into their first one."""
    ids, previous = [], 0
    for image in sorted(request.images, key=lambda image: image.start):
        ids += request.prompt_token_ids[previous : image.start + 1]
        previous = image.start + len(image.features)
    return ids + request.prompt_token_ids[previous:]


def sampling_params(sampling: SamplingConfig) -> SamplingParams:
    """vLLM's ``SamplingParams`` for Tandem's (greedy when the temperature is 0)."""
    return SamplingParams(
        n=1,
        max_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        repetition_penalty=sampling.repetition_penalty,
        seed=sampling.seed,
        stop=list(sampling.stop),
        stop_token_ids=list(sampling.stop_token_ids),
        ignore_eos=sampling.ignore_eos,
        skip_special_tokens=True,
        output_kind=RequestOutputKind.DELTA,
    )
