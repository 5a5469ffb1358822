"""Sampling values that cannot be computed: clamped or refused at the edge, isolated per row.

Issue 11, finding 1: a tiny temperature or repetition penalty overflowed float32 scores to
inf/NaN. Tiny temperatures are raised to a floor (vLLM's rule), out-of-range penalties are
INVALID_ARGUMENT, and a row whose scores are still not finite gets ``GenerationFailed`` in place
of its token while its neighbours sample as usual.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from vlm.v1 import common_pb2

from llm_service.convert import sampling_from_pb
from llm_service.engine import sampling
from llm_service.engine.sampling import RowSampler, sample
from llm_service.engine.types import MIN_TEMPERATURE, GenerationFailed, SamplingConfig
from tandem.errors import InvalidInput


def _row(**kwargs: Any) -> RowSampler:
    return RowSampler(SamplingConfig(**kwargs), [])


def _logits(rows: int, vocab: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 30


@pytest.mark.parametrize("tiny", [6e-38, 1e-42, 1e-8, 0.009])
def test_a_tiny_temperature_is_raised_to_the_floor(tiny: float) -> None:
    config = SamplingConfig(temperature=tiny, seed=1)
    assert config.temperature == MIN_TEMPERATURE == 0.01 and not config.greedy
    floor = _row(temperature=0.01, seed=1)
    assert sample(_logits(1), [RowSampler(config, [])]) == sample(_logits(1), [floor])


def test_zero_stays_greedy_and_ordinary_temperatures_are_kept() -> None:
    assert SamplingConfig(temperature=0.0).greedy
    assert SamplingConfig(temperature=0.7).temperature == 0.7


@pytest.mark.parametrize("penalty", [1e-40, 0.009, 10.5, 1e30, math.nan, math.inf])
def test_an_out_of_range_repetition_penalty_is_refused(penalty: float) -> None:
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingConfig(repetition_penalty=penalty)


def test_the_edges_of_the_penalty_range_are_accepted() -> None:
    assert SamplingConfig(repetition_penalty=0.01).repetition_penalty == 0.01
    assert SamplingConfig(repetition_penalty=10.0).repetition_penalty == 10.0


def _params(**fields: Any) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(**({"max_new_tokens": 8} | fields))


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"repetition_penalty": 1e-40}, "repetition_penalty"),
        ({"repetition_penalty": 50.0}, "repetition_penalty"),
        ({"top_p": math.nan}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
    ],
)
def test_grpc_sampling_out_of_range_is_invalid_argument(fields: dict[str, float], names: str) -> None:
    with pytest.raises(InvalidInput, match=names):
        sampling_from_pb(_params(**fields), 256)


def test_grpc_ignore_eos_reaches_the_engine_config() -> None:
    assert sampling_from_pb(_params(ignore_eos=True), 256).ignore_eos is True
    assert sampling_from_pb(_params(), 256).ignore_eos is False


def test_grpc_floats_arrive_as_the_decimals_sent() -> None:
    """0.01 travels as float32 0.0099999998: still inside the range, and read back as 0.01."""
    config = sampling_from_pb(_params(repetition_penalty=0.01, temperature=6e-38, top_p=0.9), 256)
    assert (config.repetition_penalty, config.temperature, config.top_p) == (0.01, 0.01, 0.9)


def test_a_row_with_non_finite_scores_fails_alone() -> None:
    logits = _logits(4)
    logits[1, 3] = math.nan
    logits[2, 5] = math.inf
    logits[3, :10] = -math.inf  # impossible tokens are fine
    rows = [_row(), _row(temperature=1.0, seed=1), _row(), _row(temperature=1.0, seed=2)]
    got = sample(logits, rows)
    assert got[0] == int(logits[0].argmax())
    assert isinstance(got[1], GenerationFailed) and isinstance(got[2], GenerationFailed)
    assert isinstance(got[3], int) and got[3] >= 10
    assert "not finite" in str(got[1])


def test_a_row_with_no_possible_token_fails_alone() -> None:
    logits = _logits(2)
    logits[0] = -math.inf
    got = sample(logits, [_row(temperature=1.0, seed=1), _row()])
    assert isinstance(got[0], GenerationFailed) and got[1] == int(logits[1].argmax())


def test_scores_are_processed_in_float32() -> None:
    # float16 tops out at 65504: a logit of ~60 times 100 (penalty 0.01) over 0.01 is ~6e5, so the
    # rows fail if the scores stay in the model's float16 and sample once they are float32.
    logits = _logits(2).to(torch.float16)
    assert not torch.isfinite(logits[0].max() * 100 / 0.01)
    rows = [_row(repetition_penalty=0.01), _row(temperature=0.01, seed=3, repetition_penalty=0.01)]
    rows[0].history = rows[1].history = list(range(40))
    assert all(isinstance(t, int) for t in sample(logits, rows))


def test_a_failing_batch_is_sampled_row_by_row_with_the_same_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    logits = _logits(3, vocab=60)

    def rows() -> list[RowSampler]:
        return [_row(temperature=1.5, seed=i) for i in range(3)]

    expected = sample(logits, rows())
    probabilities = sampling._probabilities

    def breaks_on_batches(scores: torch.Tensor, configs: list[SamplingConfig]) -> torch.Tensor:
        if scores.shape[0] > 1:
            raise RuntimeError("a batched kernel failed")
        return probabilities(scores, configs)

    monkeypatch.setattr(sampling, "_probabilities", breaks_on_batches)
    assert sample(logits, rows()) == expected


def test_a_row_whose_draw_raises_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    logits = _logits(3)
    multinomial = torch.multinomial
    rows = [_row(temperature=1.0, seed=1), _row(temperature=1.0, seed=2), _row(temperature=1.0, seed=3)]
    doomed = rows[1].generator

    def flaky(probs: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is doomed:
            raise RuntimeError("device error")
        return multinomial(probs, n, generator=generator)

    monkeypatch.setattr(torch, "multinomial", flaky)
    got = sample(logits, rows)
    assert isinstance(got[1], GenerationFailed)
    assert isinstance(got[0], int) and isinstance(got[2], int)
