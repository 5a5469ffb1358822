"""KV reuse across the turns of a session: same tokens as a full prefill, fewer positions prefilled."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from llm_service.engine import Engine, EngineConfig, EngineRequest, SamplingConfig
from tandem.testing.engine import (
    CausalLMAdapter,
    byte_level_tokenizer,
    collect,
    text_request,
)
from tests.support.engines import random_ids, running_engine

EOS = 2


def _engine(hf_model: Any, entries: int = 8) -> Engine:
    config = EngineConfig(context_length=512, session_cache_entries=entries)
    return Engine(CausalLMAdapter(hf_model), byte_level_tokenizer(300), config, [EOS])


@pytest.fixture
def engine(hf_model: Any) -> Iterator[Engine]:
    with running_engine(_engine(hf_model)) as engine:
        yield engine


def _greedy(n: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n)


async def test_second_turn_reuses_the_first_and_matches_a_stateless_run(
    engine: Engine, hf_model: Any
) -> None:
    model = engine.model
    first_prompt = random_ids(20, seed=1)
    first = await collect(engine, text_request(model, first_prompt, _greedy(8), session_id="s"))
    assert first.final.finish_reason == "length"
    second_prompt = first_prompt + first.token_ids + random_ids(10, seed=2)
    reused = await collect(engine, text_request(model, second_prompt, _greedy(12), session_id="s"))
    stateless = await collect(engine, text_request(model, second_prompt, _greedy(12)))
    assert reused.final.usage is not None and reused.final.usage.cached_tokens == 20 + 8 - 1
    assert reused.token_ids == stateless.token_ids
    with torch.inference_mode():
        hf = hf_model.generate(torch.tensor([second_prompt]), do_sample=False, max_new_tokens=12)
    assert reused.token_ids == hf[0, len(second_prompt) :].tolist()
    assert engine.metrics.get("cached_prompt_tokens") == 27


async def test_a_diverging_turn_reuses_only_the_shared_prefix(engine: Engine) -> None:
    model = engine.model
    prompt = random_ids(30, seed=3)
    await collect(engine, text_request(model, prompt, _greedy(4), session_id="s"))
    edited = prompt[:12] + random_ids(9, seed=4)
    reused = await collect(engine, text_request(model, edited, _greedy(10), session_id="s"))
    stateless = await collect(engine, text_request(model, edited, _greedy(10)))
    assert reused.final.usage is not None and reused.final.usage.cached_tokens == 12
    assert reused.token_ids == stateless.token_ids


def _image_request(
    model: Any, ids: list[int], image_seed: int, n: int, session_id: str | None
) -> EngineRequest:
    """Prompt ``ids`` with 6 image positions after the 3rd token: negative keys, random features."""
    request = text_request(model, ids, _greedy(n), session_id=session_id)
    features = torch.randn(6, model.hidden_size, generator=torch.Generator().manual_seed(image_seed))
    request.inputs_embeds = torch.cat([request.inputs_embeds[:3], features, request.inputs_embeds[3:]])
    request.prompt_keys = ids[:3] + [-(image_seed * 1000 + k + 1) for k in range(6)] + ids[3:]
    request.prompt_token_ids = ids[:3] + [299] * 6 + ids[3:]
    request.position_ids = torch.arange(len(ids) + 6)[None]
    request.next_position = len(ids) + 6
    request.image_tokens = 6
    return request


async def test_image_positions_match_by_image_key(engine: Engine) -> None:
    model = engine.model
    text = random_ids(12, seed=5)
    first = await collect(engine, _image_request(model, text, image_seed=1, n=6, session_id="img"))
    follow = text + first.token_ids + random_ids(5, seed=6)
    same = await collect(engine, _image_request(model, follow, image_seed=1, n=8, session_id="img"))
    assert same.final.usage is not None and same.final.usage.cached_tokens == 18 + 6 - 1
    assert same.final.usage.image_tokens == 6
    assert same.token_ids == (await collect(engine, _image_request(model, follow, 1, 8, None))).token_ids
    other = await collect(engine, _image_request(model, follow, image_seed=2, n=8, session_id="img"))
    assert other.final.usage is not None and other.final.usage.cached_tokens == 3  # up to the image
    assert other.token_ids == (await collect(engine, _image_request(model, follow, 2, 8, None))).token_ids


async def test_reuse_is_exact_while_batched_with_other_requests(engine: Engine) -> None:
    model = engine.model
    prompt = random_ids(16, seed=7)
    first = await collect(engine, text_request(model, prompt, _greedy(6), session_id="b"))
    follow = prompt + first.token_ids + random_ids(4, seed=8)
    others = [text_request(model, random_ids(5 + 9 * i, seed=20 + i), _greedy(15)) for i in range(3)]
    reused, *_ = await asyncio.gather(
        collect(engine, text_request(model, follow, _greedy(15), session_id="b")),
        *(collect(engine, r) for r in others),
    )
    assert reused.final.usage is not None and reused.final.usage.cached_tokens == 21
    assert reused.token_ids == (await collect(engine, text_request(model, follow, _greedy(15)))).token_ids


async def test_session_cache_is_bounded_lru(hf_model: Any) -> None:
    engine = _engine(hf_model, entries=1)
    engine.start()
    try:
        model = engine.model
        a, b = random_ids(10, seed=9), random_ids(10, seed=10)
        a_out = await collect(engine, text_request(model, a, _greedy(3), session_id="a"))
        await collect(engine, text_request(model, b, _greedy(3), session_id="b"))  # evicts "a"
        again = await collect(engine, text_request(model, a + a_out.token_ids, _greedy(3), session_id="a"))
        assert again.final.usage is not None and again.final.usage.cached_tokens == 0
    finally:
        engine.stop()


async def test_reused_prefix_then_a_chunked_suffix_is_exact(hf_model: Any) -> None:
    config = EngineConfig(context_length=512, max_prefill_tokens=4)
    engine = Engine(CausalLMAdapter(hf_model), byte_level_tokenizer(300), config, [EOS])
    engine.start()
    try:
        prompt = random_ids(13, seed=30)
        first = await collect(engine, text_request(engine.model, prompt, _greedy(5), session_id="c"))
        follow = prompt + first.token_ids + random_ids(11, seed=31)
        reused = await collect(engine, text_request(engine.model, follow, _greedy(9), session_id="c"))
    finally:
        engine.stop()
    assert reused.final.usage is not None and reused.final.usage.cached_tokens == 13 + 5 - 1
    with torch.inference_mode():
        hf = hf_model.generate(torch.tensor([follow]), do_sample=False, max_new_tokens=9)
    assert reused.token_ids == hf[0, len(follow) :].tolist()
