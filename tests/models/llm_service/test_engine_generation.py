"""Engine generation against Hugging Face ``generate()``: alone, under continuous batching, sampled."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from llm_service.engine import Engine, EngineConfig, SamplingConfig
from tandem.testing.engine import (
    CausalLMAdapter,
    Generation,
    ScriptedModel,
    byte_level_tokenizer,
    collect,
    text_request,
)
from tests.support.engines import gather_with_peak, random_ids, running_engine

EOS = 2


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return byte_level_tokenizer(300)


@pytest.fixture
def engine(hf_model: Any, tokenizer: Any) -> Iterator[Engine]:
    config = EngineConfig(context_length=256)
    with running_engine(Engine(CausalLMAdapter(hf_model), tokenizer, config, [EOS])) as engine:
        yield engine


def _hf_greedy(model: Any, ids: list[int], n: int, **kwargs: Any) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, **kwargs)
    return out[0, len(ids) :].tolist()


async def test_greedy_alone_matches_hf_generate(engine: Engine, hf_model: Any) -> None:
    for length, n in [(1, 6), (7, 20), (33, 12)]:
        ids = random_ids(length, seed=length)
        got = await collect(engine, text_request(engine.model, ids, SamplingConfig(max_new_tokens=n)))
        expected = _hf_greedy(hf_model, ids, n)
        assert got.token_ids == expected
        assert got.final.usage is not None and got.final.usage.completion_tokens == len(expected)
        assert got.final.usage.prompt_tokens == length and got.final.usage.cached_tokens == 0


async def test_eight_staggered_requests_each_match_their_solo_output(engine: Engine, hf_model: Any) -> None:
    lengths, budgets = [3, 40, 11, 25, 1, 17, 32, 8], [30, 5, 22, 12, 28, 9, 18, 25]
    prompts = [random_ids(length, seed=100 + i) for i, length in enumerate(lengths)]

    async def run(i: int) -> Generation:
        await asyncio.sleep(0.004 * i)
        return await collect(
            engine, text_request(engine.model, prompts[i], SamplingConfig(max_new_tokens=budgets[i]))
        )

    results, peak = await gather_with_peak(engine, *(run(i) for i in range(8)))
    for i, got in enumerate(results):
        assert got.token_ids == _hf_greedy(hf_model, prompts[i], budgets[i]), f"request {i}"
    decode_steps = engine.metrics.snapshot()["engine_decode_seconds_count"]
    generated = sum(len(r.token_ids) for r in results)
    assert peak >= 3 and decode_steps < generated - 8 - 20  # steps were shared across requests


async def test_repetition_penalty_matches_hf(engine: Engine, hf_model: Any) -> None:
    ids = random_ids(12, seed=5)
    sampling = SamplingConfig(max_new_tokens=16, repetition_penalty=1.8)
    got = await collect(engine, text_request(engine.model, ids, sampling))
    assert got.token_ids == _hf_greedy(hf_model, ids, 16, repetition_penalty=1.8)
    assert got.token_ids != _hf_greedy(hf_model, ids, 16)


async def test_seeded_sampling_is_reproducible_and_independent_of_batch_companions(engine: Engine) -> None:
    ids = random_ids(9, seed=11)

    def seeded(seed: int) -> Any:
        sampling = SamplingConfig(max_new_tokens=24, temperature=1.0, top_p=0.95, top_k=100, seed=seed)
        return text_request(engine.model, ids, sampling)

    alone = await collect(engine, seeded(7))
    again = await collect(engine, seeded(7))
    noise = [
        text_request(engine.model, random_ids(5 + i, i), SamplingConfig(max_new_tokens=30, temperature=1.3))
        for i in range(3)
    ]
    together = await asyncio.gather(collect(engine, seeded(7)), *(collect(engine, r) for r in noise))
    other = await collect(engine, seeded(8))
    assert alone.token_ids == again.token_ids == together[0].token_ids
    assert other.token_ids != alone.token_ids


async def test_max_new_tokens_ends_with_length(engine: Engine) -> None:
    got = await collect(
        engine, text_request(engine.model, random_ids(4, 1), SamplingConfig(max_new_tokens=3))
    )
    assert len(got.token_ids) == 3 and got.final.finish_reason == "length"
    assert [e.finish_reason for e in got.events[:-1]] == [None, None]


async def test_stop_token_ids_end_generation_with_stop(engine: Engine, hf_model: Any) -> None:
    ids = random_ids(10, seed=21)
    free = _hf_greedy(hf_model, ids, 12)
    stop_at = next(i for i, t in enumerate(free) if t not in free[:i] and i >= 2)
    sampling = SamplingConfig(max_new_tokens=12, stop_token_ids=(free[stop_at],))
    got = await collect(engine, text_request(engine.model, ids, sampling))
    assert got.token_ids == free[: stop_at + 1]
    assert got.final.finish_reason == "stop"


async def test_eos_ends_generation_like_hf() -> None:
    script = [40, 41, EOS, 42]
    model = ScriptedModel(script, start=3, vocab_size=300)
    engine = Engine(model, byte_level_tokenizer(300), EngineConfig(context_length=64), [EOS])
    engine.start()
    try:
        got = await collect(engine, text_request(model, [5, 6, 7], SamplingConfig(max_new_tokens=10)))
    finally:
        engine.stop()
    assert got.token_ids == [40, 41, EOS] and got.final.finish_reason == "stop"
    assert got.final.usage is not None and got.final.usage.completion_tokens == 3


@pytest.mark.parametrize("stop_ids", [(), (EOS,)])
async def test_ignore_eos_runs_to_max_new_tokens_but_stop_token_ids_still_stop(
    stop_ids: tuple[int, ...],
) -> None:
    script = [40, EOS, 41, EOS, 42]
    model = ScriptedModel(script, start=3, vocab_size=300, fallback=43)
    engine = Engine(model, byte_level_tokenizer(300), EngineConfig(context_length=64), [EOS])
    sampling = SamplingConfig(max_new_tokens=7, ignore_eos=True, stop_token_ids=stop_ids)
    with running_engine(engine):
        got = await collect(engine, text_request(model, [5, 6, 7], sampling))
    if stop_ids:  # asked for by the request itself: vLLM's ignore_eos keeps those
        assert got.token_ids == [40, EOS] and got.final.finish_reason == "stop"
    else:
        assert got.token_ids == [40, EOS, 41, EOS, 42, 43, 43] and got.final.finish_reason == "length"
        assert got.final.usage is not None and got.final.usage.completion_tokens == 7


async def _scripted(text: str, sampling: SamplingConfig) -> tuple[Generation, Any]:
    tok = byte_level_tokenizer(300)
    script = tok.encode(text, add_special_tokens=False)
    model = ScriptedModel(script, start=2, vocab_size=300)
    engine = Engine(model, tok, EngineConfig(context_length=256), [EOS])
    engine.start()
    try:
        return await collect(engine, text_request(model, [1, 5], sampling)), tok
    finally:
        engine.stop()


async def test_multibyte_text_streams_whole_characters() -> None:
    text = "Héllo 世界 🎉🚀 naïve 東京"
    got, _ = await _scripted(text, SamplingConfig(max_new_tokens=200))
    assert got.text == text and got.final.finish_reason == "stop"  # the script ends with EOS
    assert all("\ufffd" not in e.text for e in got.events)
    assert sum(1 for e in got.events if e.token_ids and not e.text) >= 3  # bytes held back


async def test_stop_string_is_cut_and_never_shown_in_part() -> None:
    got, _ = await _scripted("Héllo 世界 STOP and more", SamplingConfig(max_new_tokens=200, stop=("STOP",)))
    assert got.text == "Héllo 世界 " and got.final.finish_reason == "stop"
    shown = ""
    for event in got.events:
        shown += event.text
        assert not any(shown.endswith("STOP"[:k]) for k in range(1, 5))


async def test_text_held_back_by_a_possible_stop_is_released_at_length() -> None:
    n = len(byte_level_tokenizer(300).encode("abc ST", add_special_tokens=False))
    got, _ = await _scripted("abc ST", SamplingConfig(max_new_tokens=n, stop=("STOP",)))
    assert got.final.finish_reason == "length"
    assert got.text == "abc ST"
    assert "S" not in "".join(e.text for e in got.events[:-1]) and "ST" in got.final.text


class _MRopeShaped(CausalLMAdapter):
    """A text model behind the 3-D position interface (checks the engine's M-RoPE plumbing)."""

    position_dims = 3

    def forward(
        self, inputs_embeds: Any, position_ids: Any, attention_mask: Any, past_key_values: Any
    ) -> Any:
        batch, length, _ = inputs_embeds.shape
        assert position_ids.shape == (3, batch, length)
        assert torch.equal(position_ids[0], position_ids[1]) and torch.equal(position_ids[0], position_ids[2])
        return super().forward(inputs_embeds, position_ids[0], attention_mask, past_key_values)


async def test_three_dimensional_positions_reach_the_model(hf_model: Any, tokenizer: Any) -> None:
    model = _MRopeShaped(hf_model)
    engine = Engine(model, tokenizer, EngineConfig(context_length=128), [EOS])
    engine.start()
    try:
        ids = [random_ids(6, 31), random_ids(14, 32)]
        results = await asyncio.gather(
            *(collect(engine, text_request(model, p, SamplingConfig(max_new_tokens=10))) for p in ids)
        )
    finally:
        engine.stop()
    for prompt, got in zip(ids, results, strict=True):
        assert got.token_ids == _hf_greedy(hf_model, prompt, 10)


class _Recording(CausalLMAdapter):
    """Records each forward's (batch, length); the first forward waits for ``gate`` (to queue work)."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.calls: list[tuple[int, int]] = []
        self.gate = threading.Event()

    def forward(
        self, inputs_embeds: Any, position_ids: Any, attention_mask: Any, past_key_values: Any
    ) -> Any:
        if not self.calls:
            self.gate.wait(timeout=10)
        self.calls.append((inputs_embeds.shape[0], inputs_embeds.shape[1]))
        return super().forward(inputs_embeds, position_ids, attention_mask, past_key_values)


async def test_queued_prompts_share_padded_prefills(hf_model: Any, tokenizer: Any) -> None:
    model = _Recording(hf_model)
    engine = Engine(model, tokenizer, EngineConfig(context_length=256), [EOS])
    engine.start()
    try:
        blocker = asyncio.create_task(
            collect(engine, text_request(model, random_ids(5, 1), SamplingConfig(max_new_tokens=4)))
        )
        await asyncio.sleep(0.05)
        prompts = [random_ids(n, 40 + n) for n in (20, 18, 16, 31, 9, 27)]
        tasks = [
            asyncio.create_task(collect(engine, text_request(model, p, SamplingConfig(max_new_tokens=9))))
            for p in prompts
        ]
        while engine.waiting < len(prompts):
            await asyncio.sleep(0.005)
        model.gate.set()
        results = await asyncio.gather(*tasks)
        await blocker
    finally:
        engine.stop()
    for prompt, got in zip(prompts, results, strict=True):
        assert got.token_ids == _hf_greedy(hf_model, prompt, 9)
    prefills = [(b, n) for b, n in model.calls if n > 1]
    assert len(prefills) < 1 + len(prompts) and max(b for b, _ in prefills) >= 3


async def test_long_prompts_are_prefilled_in_chunks_between_decode_steps(
    hf_model: Any, tokenizer: Any
) -> None:
    model = _Recording(hf_model)
    model.gate.set()
    engine = Engine(model, tokenizer, EngineConfig(context_length=256, max_prefill_tokens=8), [EOS])
    engine.start()
    try:
        short, long = random_ids(4, 50), random_ids(45, 51)
        stream = engine.generate(text_request(model, short, SamplingConfig(max_new_tokens=30)))
        first = [await anext(stream) for _ in range(3)]
        got_long = await collect(engine, text_request(model, long, SamplingConfig(max_new_tokens=10)))
        rest = [event async for event in stream]
    finally:
        engine.stop()
    assert got_long.token_ids == _hf_greedy(hf_model, long, 10)
    assert [t for e in first + rest for t in e.token_ids] == _hf_greedy(hf_model, short, 30)
    chunks = [i for i, (_, n) in enumerate(model.calls) if n > 1][1:]  # after the short prompt's prefill
    assert len(chunks) == 6 and all(n <= 8 for _, n in model.calls)
    between = model.calls[chunks[0] : chunks[-1]]
    assert sum(1 for call in between if call == (1, 1)) >= 5  # the short stream kept decoding
