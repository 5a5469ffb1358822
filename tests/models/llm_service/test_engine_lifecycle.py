"""Engine admission and lifecycle: cancellation, overload, validation, warm-up, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import torch

from llm_service.engine import Engine, EngineConfig, SamplingConfig, TokenEvent
from tandem.errors import InvalidInput, Overloaded, Unavailable
from tandem.testing.engine import (
    CausalLMAdapter,
    Generation,
    byte_level_tokenizer,
    collect,
    text_request,
)
from tests.support.engines import random_ids, running_engine

STEP_SECONDS = 0.02


class _SlowCounted(CausalLMAdapter):
    """The tiny model, slowed down so a test can observe individual scheduler steps."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.forward_calls = 0
        self.batch_sizes: list[int] = []

    def forward(
        self, inputs_embeds: Any, position_ids: Any, attention_mask: Any, past_key_values: Any
    ) -> Any:
        self.forward_calls += 1
        self.batch_sizes.append(inputs_embeds.shape[0])
        time.sleep(STEP_SECONDS)
        return super().forward(inputs_embeds, position_ids, attention_mask, past_key_values)


def _make(hf_model: Any, **config: int) -> tuple[Engine, _SlowCounted]:
    model = _SlowCounted(hf_model)
    engine = Engine(model, byte_level_tokenizer(300), EngineConfig(**({"context_length": 512} | config)), [])
    return engine, model


@pytest.fixture
def slow(hf_model: Any) -> Iterator[tuple[Engine, _SlowCounted]]:
    engine, model = _make(hf_model, max_batch_size=1, max_queue=1)
    with running_engine(engine):
        yield engine, model


def _request(engine: Engine, n: int, seed: int = 0, length: int = 6) -> Any:
    return text_request(
        engine.model, random_ids(length, seed), SamplingConfig(max_new_tokens=n), request_id=f"r{seed}"
    )


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


async def _drain(stream: AsyncIterator[TokenEvent]) -> list[TokenEvent]:
    return [event async for event in stream]


async def test_closing_the_stream_frees_the_slot_within_one_step(hf_model: Any) -> None:
    engine, model = _make(hf_model, max_batch_size=4)
    engine.start()
    try:
        survivor = _request(engine, 25, seed=2, length=11)
        other = asyncio.create_task(collect(engine, survivor))
        stream = engine.generate(_request(engine, 400, seed=1))
        for _ in range(5):
            await anext(stream)
        await _until(lambda: engine.running == 2)
        calls = model.forward_calls
        await stream.aclose()
        got = await other
        # at most the step running when it was closed (and one starting at that instant) still had it
        assert model.batch_sizes[calls + 1 :] == [1] * (len(model.batch_sizes) - calls - 1)
        await _until(lambda: engine.running == 0)
        with torch.inference_mode():
            expected = hf_model.generate(
                torch.tensor([survivor.prompt_token_ids]), do_sample=False, max_new_tokens=25
            )
        assert got.token_ids == expected[0, 11:].tolist()  # the batch was filtered correctly
        assert engine.metrics.get("engine_cancelled") == 1
    finally:
        engine.stop()


async def test_cancelling_the_consumer_task_stops_generation(slow: tuple[Engine, _SlowCounted]) -> None:
    engine, _ = slow
    task = asyncio.create_task(collect(engine, _request(engine, 400)))
    await _until(lambda: engine.metrics.get("generation_tokens") >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: engine.running == 0)
    tokens = engine.metrics.get("generation_tokens")
    await asyncio.sleep(3 * STEP_SECONDS)
    assert engine.metrics.get("generation_tokens") == tokens < 50


async def _running_and_queued(
    engine: Engine, running_tokens: int, queued_tokens: int
) -> tuple[asyncio.Task[Generation], asyncio.Task[Generation]]:
    """A request that runs (once it does), then one queued behind it (once it waits)."""
    running = asyncio.create_task(collect(engine, _request(engine, running_tokens, seed=1)))
    await _until(lambda: engine.running == 1)
    queued = asyncio.create_task(collect(engine, _request(engine, queued_tokens, seed=2)))
    await _until(lambda: engine.waiting == 1)
    return running, queued


async def test_a_request_cancelled_while_queued_is_never_prefilled(slow: tuple[Engine, _SlowCounted]) -> None:
    engine, _ = slow
    first, queued = await _running_and_queued(engine, 15, 15)
    queued.cancel()
    got = await first
    assert got.final.finish_reason == "length"
    await _until(lambda: engine.waiting == 0)
    assert engine.metrics.get("engine_prefills") == 1
    assert engine.metrics.get("engine_cancelled") == 1


async def test_a_full_queue_refuses_at_once(slow: tuple[Engine, _SlowCounted]) -> None:
    engine, _ = slow
    running, queued = await _running_and_queued(engine, 400, 5)
    started = time.monotonic()
    with pytest.raises(Overloaded):
        await anext(engine.generate(_request(engine, 5, seed=3)))
    assert time.monotonic() - started < 0.5
    assert engine.metrics.get("engine_overloaded") == 1
    running.cancel()
    got = await queued
    assert got.final.finish_reason == "length"


async def test_too_long_and_malformed_requests_are_invalid_before_any_work(hf_model: Any) -> None:
    engine, model = _make(hf_model, context_length=32)
    engine.start()
    try:
        with pytest.raises(InvalidInput, match="context length"):
            await anext(engine.generate(_request(engine, 27, length=6)))
        bad = _request(engine, 4)
        bad.inputs_embeds = bad.inputs_embeds[:, :10]
        with pytest.raises(InvalidInput, match="inputs_embeds"):
            await anext(engine.generate(bad))
        bad = _request(engine, 4)
        bad.position_ids = bad.position_ids[:, :2]
        with pytest.raises(InvalidInput, match="position_ids"):
            await anext(engine.generate(bad))
        ok = await collect(engine, _request(engine, 26, length=6))  # exactly the context length
        assert len(ok.token_ids) == 26
        assert model.forward_calls == 26
    finally:
        engine.stop()


async def test_warmup_before_and_after_start(hf_model: Any) -> None:
    engine, model = _make(hf_model)
    engine.warmup()
    assert model.forward_calls == 2 and engine.metrics.get("engine_prefills") == 1
    engine.start()
    try:
        engine.warmup()
        assert model.forward_calls == 4
        await _until(lambda: engine.running == 0)
    finally:
        engine.stop()


async def test_stop_fails_waiting_and_running_requests_with_unavailable(hf_model: Any) -> None:
    engine, _ = _make(hf_model, max_batch_size=1)
    with pytest.raises(Unavailable):
        await anext(engine.generate(_request(engine, 4)))  # not started yet
    engine.start()
    running = asyncio.create_task(collect(engine, _request(engine, 400, seed=1)))
    waiting = asyncio.create_task(collect(engine, _request(engine, 400, seed=2)))
    await _until(lambda: engine.running == 1 and engine.waiting == 1)
    await asyncio.to_thread(engine.stop)
    for task in (running, waiting):
        with pytest.raises(Unavailable):
            await task
    with pytest.raises(Unavailable):
        await anext(engine.generate(_request(engine, 4)))


class _Failing(CausalLMAdapter):
    """Raises in the prefill of a 13-token prompt, and in the ``fail_decode``-th decode step."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.decodes, self.fail_decode = 0, -1

    def forward(
        self, inputs_embeds: Any, position_ids: Any, attention_mask: Any, past_key_values: Any
    ) -> Any:
        if inputs_embeds.shape[1] == 13:
            raise ValueError("boom in prefill")
        if inputs_embeds.shape[1] == 1:
            self.decodes += 1
            if self.decodes == self.fail_decode:
                raise ValueError("boom in decode")
        return super().forward(inputs_embeds, position_ids, attention_mask, past_key_values)


async def test_model_errors_fail_only_the_requests_involved(hf_model: Any) -> None:
    model = _Failing(hf_model)
    engine = Engine(model, byte_level_tokenizer(300), EngineConfig(context_length=128), [])
    engine.start()
    try:
        with pytest.raises(RuntimeError, match="generation failed"):
            await collect(engine, _request(engine, 5, length=13))
        model.fail_decode = model.decodes + 3
        with pytest.raises(RuntimeError, match="generation failed"):
            await collect(engine, _request(engine, 10, length=7))
        ok = await collect(engine, _request(engine, 6, length=7))
        assert len(ok.token_ids) == 6 and ok.final.finish_reason == "length"
        await _until(lambda: engine.running == 0 and engine.waiting == 0)
    finally:
        engine.stop()


async def test_a_free_slot_admits_even_with_no_queue(hf_model: Any) -> None:
    engine, _ = _make(hf_model, max_batch_size=1, max_queue=0)
    engine.start()
    try:
        stream = engine.generate(_request(engine, 400, seed=1))
        await anext(stream)
        with pytest.raises(Overloaded):  # the only slot is taken and nothing may wait
            await anext(engine.generate(_request(engine, 5, seed=2)))
        await stream.aclose()
        await _until(lambda: engine.running == 0)
        ok = await collect(engine, _request(engine, 3, seed=3))
        assert ok.final.finish_reason == "length"
    finally:
        engine.stop()
