"""A request whose sampling or text step fails fails alone; the rest of its batch streams on.

Issue 11, finding 1: a tiny temperature (or repetition penalty) overflowed sampling to inf/NaN,
the decode step raised, and every request in the batch failed. Each test here runs hostile
requests next to ordinary greedy streams and checks that the greedy streams produce exactly the
tokens they produce alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from llm_service.engine import Engine, EngineConfig, SamplingConfig
from llm_service.engine.sequence import Sequence
from llm_service.engine.types import GenerationFailed, TokenEvent
from tandem.errors import InvalidInput
from tandem.testing.engine import (
    CausalLMAdapter,
    Generation,
    byte_level_tokenizer,
    collect,
    text_request,
)
from tests.support.engines import random_ids, running_engine

GREEDY_PROMPTS = [(5, 24), (9, 20), (14, 22), (3, 22)]  # (prompt length, max_new_tokens)
POISON_POSITION = 40  # _Poisoned gives NaN scores to rows at this position or later


class _Poisoned(CausalLMAdapter):
    """The tiny model, with NaN logits for rows whose input sits at ``POISON_POSITION`` or later
    (a row whose numbers blew up, as fp16 overflow does), and a record of batch sizes."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.batch_sizes: list[int] = []

    def forward(
        self, inputs_embeds: Any, position_ids: Any, attention_mask: Any, past_key_values: Any
    ) -> Any:
        self.batch_sizes.append(inputs_embeds.shape[0])
        logits, cache = super().forward(inputs_embeds, position_ids, attention_mask, past_key_values)
        poisoned = position_ids[:, -1] >= POISON_POSITION
        return logits.masked_fill(poisoned[:, None], float("nan")), cache


@pytest.fixture
def engine(hf_model: Any) -> Iterator[Engine]:
    config = EngineConfig(context_length=256, max_batch_size=32, max_queue=64)
    with running_engine(Engine(_Poisoned(hf_model), byte_level_tokenizer(300), config, [])) as engine:
        yield engine


def _greedy_requests(engine: Engine) -> list[Any]:
    return [
        text_request(engine.model, random_ids(length, seed=i), SamplingConfig(max_new_tokens=n), f"greedy{i}")
        for i, (length, n) in enumerate(GREEDY_PROMPTS)
    ]


def _unchecked(config: SamplingConfig, **values: float) -> SamplingConfig:
    """``config`` with values its checks would refuse or clamp (a value the checks missed)."""
    for name, value in values.items():
        object.__setattr__(config, name, value)
    return config


async def _solo(engine: Engine, requests: list[Any]) -> list[list[int]]:
    return [(await collect(engine, request)).token_ids for request in requests]


@dataclass
class _Failed:
    """What a failed request streamed before its error."""

    events: list[TokenEvent]
    error: Exception


async def _outcome(engine: Engine, request: Any) -> Generation | _Failed:
    events: list[TokenEvent] = []
    try:
        async for event in engine.generate(request):
            events.append(event)
    except Exception as exc:
        return _Failed(events, exc)
    return Generation(events)


async def _blast(engine: Engine, greedy: list[Any], hostile: list[Any]) -> tuple[list[Any], list[Any]]:
    """Run everything at once; the greedy streams start first, the hostile ones join mid-stream."""
    greedy_tasks = [asyncio.create_task(_outcome(engine, r)) for r in greedy]
    while engine.running < len(greedy):
        await asyncio.sleep(0.001)
    hostile_out = await asyncio.gather(*(_outcome(engine, r) for r in hostile))
    return list(await asyncio.gather(*greedy_tasks)), list(hostile_out)


def _assert_unharmed(greedy_out: list[Any], alone: list[list[int]]) -> None:
    for i, (got, expected) in enumerate(zip(greedy_out, alone, strict=True)):
        assert isinstance(got, Generation), f"greedy stream {i} failed: {got!r}"
        assert got.token_ids == expected, f"greedy stream {i}"
        assert got.final.finish_reason == "length"


async def test_a_blast_of_tiny_temperatures_leaves_other_streams_untouched(engine: Engine) -> None:
    greedy = _greedy_requests(engine)
    alone = await _solo(engine, greedy)
    tiny = [6e-38, 1e-42, 1e-30, 1e-8, 5e-3]
    hostile = [
        text_request(
            engine.model,
            random_ids(4 + i % 7, seed=50 + i),
            SamplingConfig(max_new_tokens=12, temperature=tiny[i % len(tiny)], seed=i),
            f"tiny{i}",
        )
        for i in range(15)
    ]
    assert all(r.sampling.temperature == 0.01 for r in hostile)  # raised to the floor, as vLLM does
    greedy_out, hostile_out = await _blast(engine, greedy, hostile)
    _assert_unharmed(greedy_out, alone)
    assert all(isinstance(h, Generation) and len(h.token_ids) == 12 for h in hostile_out), hostile_out
    assert isinstance(engine.model, _Poisoned)
    assert max(engine.model.batch_sizes) > len(greedy)  # the hostile rows shared the batch


async def test_rows_whose_scores_overflow_fail_alone(engine: Engine) -> None:
    greedy = _greedy_requests(engine)
    alone = await _solo(engine, greedy)
    bad = [
        _unchecked(SamplingConfig(max_new_tokens=12, temperature=1.0, seed=1), temperature=1e-42),
        _unchecked(SamplingConfig(max_new_tokens=12, repetition_penalty=2.0), repetition_penalty=1e-40),
        _unchecked(
            SamplingConfig(max_new_tokens=12, temperature=0.5, seed=2, repetition_penalty=2.0),
            repetition_penalty=1e-40,
        ),
    ]
    hostile = [
        text_request(engine.model, random_ids(6, seed=70 + i), s, f"bad{i}") for i, s in enumerate(bad)
    ]
    greedy_out, hostile_out = await _blast(engine, greedy, hostile)
    _assert_unharmed(greedy_out, alone)
    for failed in hostile_out:
        assert isinstance(failed, _Failed) and isinstance(failed.error, GenerationFailed), failed
        assert failed.error.code == grpc.StatusCode.INTERNAL and "not finite" in str(failed.error)


async def test_a_row_whose_model_scores_turn_nan_mid_stream_fails_alone(engine: Engine) -> None:
    greedy = _greedy_requests(engine)
    alone = await _solo(engine, greedy)
    doomed = text_request(engine.model, random_ids(35, seed=9), SamplingConfig(max_new_tokens=30), "doomed")
    greedy_out, (failed,) = await _blast(engine, greedy, [doomed])
    _assert_unharmed(greedy_out, alone)
    assert isinstance(failed, _Failed) and isinstance(failed.error, GenerationFailed)
    # positions 34..39 gave six tokens; the row failed at position 40, on its own
    assert sum(len(e.token_ids) for e in failed.events) == POISON_POSITION - 34


async def test_a_row_whose_text_step_raises_fails_alone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    greedy = _greedy_requests(engine)
    alone = await _solo(engine, greedy)
    accept = Sequence.accept

    def flaky(self: Sequence, token_id: int) -> TokenEvent:
        if self.request.request_id == "flaky" and len(self.generated) == 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a detokeniser bug")
        return accept(self, token_id)

    monkeypatch.setattr(Sequence, "accept", flaky)
    flaky_request = text_request(
        engine.model, random_ids(6, seed=3), SamplingConfig(max_new_tokens=20), "flaky"
    )
    greedy_out, (failed,) = await _blast(engine, greedy, [flaky_request])
    _assert_unharmed(greedy_out, alone)
    assert isinstance(failed, _Failed) and isinstance(failed.error, GenerationFailed)
    assert "into text" in str(failed.error) and sum(len(e.token_ids) for e in failed.events) == 3
    while engine.running:
        await asyncio.sleep(0.001)
    ok = await collect(engine, greedy[0])  # the engine goes on serving
    assert ok.token_ids == alone[0]


async def test_stop_token_ids_outside_the_vocabulary_are_invalid(engine: Engine) -> None:
    for ids in ((300,), (5, 10**6)):
        request = text_request(engine.model, [5, 6], SamplingConfig(max_new_tokens=2, stop_token_ids=ids))
        with pytest.raises(InvalidInput, match="vocabulary size"):
            await anext(engine.generate(request))
    with pytest.raises(ValueError, match="non-negative"):
        SamplingConfig(stop_token_ids=(-1,))
