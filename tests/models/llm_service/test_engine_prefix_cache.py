"""The prefix cache through the engine: a hit gives the same tokens as a full prefill (and as HF
``generate``) while fewer positions are prefilled, across requests, turns and tenants."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from llm_service.engine import Engine, EngineConfig, EngineRequest, SamplingConfig
from llm_service.engine.prefix_cache import PrefixCache
from tandem.testing.engine import CausalLMAdapter, Generation, byte_level_tokenizer, collect, text_request
from tests.support.engines import random_ids, running_engine

EOS = 2
BLOCK = 4
BLOCK_BYTES = 2 * 2 * 2 * 16 * 4 * BLOCK  # tiny Llama: layers x (K, V) x kv heads x head dim x fp32


def _engine(hf_model: Any, **config: Any) -> Engine:
    config = {"context_length": 512, "prefix_block_size": BLOCK} | config
    return Engine(CausalLMAdapter(hf_model), byte_level_tokenizer(300), EngineConfig(**config), [EOS])


@pytest.fixture
def engine(hf_model: Any) -> Iterator[Engine]:
    with running_engine(_engine(hf_model)) as engine:
        yield engine


def _greedy(n: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n)


def _cached(generation: Generation) -> int:
    assert generation.final.usage is not None
    return generation.final.usage.cached_tokens


def _hf(hf_model: Any, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n)
    return out[0, len(prompt) :].tolist()  # type: ignore[no-any-return]


async def _fresh(hf_model: Any, request: EngineRequest) -> Generation:
    """``request`` on an engine without a prefix cache: what a full prefill gives."""
    with running_engine(_engine(hf_model, prefix_cache_bytes=0)) as engine:
        return await collect(engine, request)


async def test_the_same_prompt_twice_hits_and_gives_the_same_tokens(engine: Engine, hf_model: Any) -> None:
    prompt = random_ids(22, seed=1)
    first = await collect(engine, text_request(engine.model, prompt, _greedy(8)))
    again = await collect(engine, text_request(engine.model, prompt, _greedy(8)))
    assert _cached(first) == 0 and _cached(again) == 21  # all but the last position (its logits)
    assert again.token_ids == first.token_ids == _hf(hf_model, prompt, 8)
    assert engine.metrics.get("cached_prompt_tokens") == 21


async def test_the_next_turn_hits_the_last_turns_prompt_and_answer(engine: Engine, hf_model: Any) -> None:
    first_prompt = random_ids(20, seed=3)
    first = await collect(engine, text_request(engine.model, first_prompt, _greedy(8), session_id="s"))
    assert first.final.finish_reason == "length"
    # the history re-sent (a session, or any OpenAI client): the answer's KV was kept too
    second_prompt = first_prompt + first.token_ids + random_ids(10, seed=4)
    second = await collect(engine, text_request(engine.model, second_prompt, _greedy(12)))
    assert _cached(second) == 20 + 8 - 1  # the last answer token was never fed: no KV
    assert second.token_ids == _hf(hf_model, second_prompt, 12)


async def test_prompts_sharing_a_prefix_hit_it_to_the_position(engine: Engine, hf_model: Any) -> None:
    shared = random_ids(13, seed=5)
    await collect(engine, text_request(engine.model, [*shared, 7, 8, 9], _greedy(4)))
    other = [*shared, 9, 8, 7, 6]
    hit = await collect(engine, text_request(engine.model, other, _greedy(10)))
    assert _cached(hit) == 13  # 3 whole blocks and the first position of a block that diverges
    assert hit.token_ids == _hf(hf_model, other, 10)
    shorter = [*shared[:6], 5, 5, 5]
    assert _cached(await collect(engine, text_request(engine.model, shorter, _greedy(2)))) == 6


def _image_request(ids: list[int], image_seed: int, model: Any, at: int, rows: int = 6) -> EngineRequest:
    """Prompt ``ids`` with ``rows`` image positions after ``at`` tokens: negative keys, random features."""
    request = text_request(model, ids, _greedy(8))
    features = torch.randn(rows, model.hidden_size, generator=torch.Generator().manual_seed(image_seed))
    embeds = request.inputs_embeds
    return dataclasses.replace(
        request,
        inputs_embeds=torch.cat([embeds[:at], features, embeds[at:]]),
        prompt_keys=ids[:at] + [-(image_seed * 1000 + k + 1) for k in range(rows)] + ids[at:],
        prompt_token_ids=ids[:at] + [299] * rows + ids[at:],
        position_ids=torch.arange(len(ids) + rows)[None],
        next_position=len(ids) + rows,
        image_tokens=rows,
    )


async def test_an_image_hits_by_its_key_and_another_image_misses(engine: Engine, hf_model: Any) -> None:
    model, text = engine.model, random_ids(14, seed=8)
    await collect(engine, _image_request(text, 1, model, at=8))
    longer = _image_request([*text, 7], 1, model, at=8)
    same = await collect(engine, longer)
    assert _cached(same) == 20 and same.token_ids == (await _fresh(hf_model, longer)).token_ids
    other_image = _image_request(text, 2, model, at=8)
    other = await collect(engine, other_image)
    assert _cached(other) == 8  # the text before the image only
    assert other.token_ids == (await _fresh(hf_model, other_image)).token_ids


async def test_a_hit_never_ends_inside_an_image(engine: Engine, hf_model: Any) -> None:
    ends_with_image = _image_request(random_ids(3, seed=9), 3, engine.model, at=3)  # positions 3-8
    await collect(engine, ends_with_image)
    again = await collect(engine, ends_with_image)
    assert _cached(again) == 3  # 8 positions are cached, but the 9th (last) is in the image
    assert again.token_ids == (await _fresh(hf_model, ends_with_image)).token_ids


async def test_hits_are_exact_while_batched_with_other_requests(engine: Engine, hf_model: Any) -> None:
    prompt = random_ids(16, seed=11)
    first = await collect(engine, text_request(engine.model, prompt, _greedy(6)))
    follow = prompt + first.token_ids + random_ids(4, seed=12)
    others = [text_request(engine.model, random_ids(5 + 9 * i, seed=20 + i), _greedy(15)) for i in range(3)]
    reused, *_ = await asyncio.gather(
        collect(engine, text_request(engine.model, follow, _greedy(15))),
        *(collect(engine, r) for r in others),
    )
    assert _cached(reused) == 21
    assert reused.token_ids == _hf(hf_model, follow, 15)


async def test_the_cache_is_bounded_by_bytes(hf_model: Any) -> None:
    with running_engine(_engine(hf_model, prefix_cache_bytes=4 * BLOCK_BYTES)) as engine:
        a, b = random_ids(12, seed=13), random_ids(12, seed=14)
        await collect(engine, text_request(engine.model, a, _greedy(1)))  # 3 blocks
        await collect(engine, text_request(engine.model, b, _greedy(1)))  # 3 more: a's tail goes
        assert engine.metrics.get("prefix_cache_bytes") == 4 * BLOCK_BYTES
        again = await collect(engine, text_request(engine.model, a, _greedy(1)))
        assert _cached(again) == 4  # a's first block stayed (heads outlive tails)


async def test_tenants_never_hit_each_others_blocks(engine: Engine) -> None:
    prompt = random_ids(21, seed=15)

    def request(tenant: str) -> EngineRequest:
        return dataclasses.replace(text_request(engine.model, prompt, _greedy(3)), tenant=tenant)

    await collect(engine, request("alice"))
    assert _cached(await collect(engine, request("bob"))) == 0
    assert _cached(await collect(engine, request("alice"))) == 20
    assert _cached(await collect(engine, request(""))) == 0


async def test_a_hit_then_a_chunked_suffix_is_exact(hf_model: Any) -> None:
    with running_engine(_engine(hf_model, max_prefill_tokens=4)) as engine:
        prompt = random_ids(13, seed=30)
        first = await collect(engine, text_request(engine.model, prompt, _greedy(5)))
        follow = prompt + first.token_ids + random_ids(11, seed=31)
        reused = await collect(engine, text_request(engine.model, follow, _greedy(9)))
    assert _cached(reused) == 13 + 5 - 1
    assert reused.token_ids == _hf(hf_model, follow, 9)


async def test_a_disabled_cache_reuses_nothing(hf_model: Any) -> None:
    prompt = random_ids(10, seed=40)
    with running_engine(_engine(hf_model, prefix_cache_bytes=0)) as engine:
        await collect(engine, text_request(engine.model, prompt, _greedy(2)))
        again = await collect(engine, text_request(engine.model, prompt, _greedy(2)))
    assert _cached(again) == 0 and engine.metrics.get("engine_prefill_tokens") == 20


async def test_a_failure_storing_kv_costs_only_the_reuse(
    engine: Engine, hf_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("no room")

    monkeypatch.setattr(PrefixCache, "insert", broken)
    prompt = random_ids(12, seed=41)
    first = await collect(engine, text_request(engine.model, prompt, _greedy(6)))
    again = await collect(engine, text_request(engine.model, prompt, _greedy(6)))
    assert first.token_ids == again.token_ids == _hf(hf_model, prompt, 6)
    assert _cached(again) == 0
