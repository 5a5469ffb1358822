"""Engine pieces as pure logic: sampling, configs, the batched KV."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from llm_service.engine.batch import DecodeBatch
from llm_service.engine.kv_layer import GrowingLayer
from llm_service.engine.sampling import RowSampler, sample
from llm_service.engine.types import EngineConfig, SamplingConfig


def _row(history: list[int] | None = None, **kwargs: object) -> RowSampler:
    return RowSampler(SamplingConfig(**kwargs), history or [])  # type: ignore[arg-type]


def _logits(rows: int = 3, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax() -> None:
    logits = _logits()
    assert sample(logits, [_row(), _row(), _row()]) == logits.argmax(-1).tolist()


def test_repetition_penalty_follows_the_hf_rule() -> None:
    logits = torch.tensor([[2.0, -1.0, 1.9, 0.5]])
    assert sample(logits, [_row([0], repetition_penalty=2.0)]) == [2]  # 2.0 / 2 < 1.9
    negative = torch.tensor([[-0.1, -0.3, -5.0, -0.15]])
    assert sample(negative, [_row([0], repetition_penalty=2.0)]) == [3]  # -0.1 * 2 < -0.15
    assert logits[0, 0] == 2.0  # the caller's logits are left alone


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    logits = _logits(rows=2)
    rows = [_row(temperature=1.5, top_k=1, seed=3), _row(temperature=1.5, top_p=1e-6, seed=4)]
    assert sample(logits, rows) == logits.argmax(-1).tolist()


def test_top_k_restricts_samples_to_the_k_best() -> None:
    logits = _logits(rows=1, vocab=100)
    best = set(logits[0].topk(5).indices.tolist())
    row = _row(temperature=5.0, top_k=5, seed=7)
    drawn = {sample(logits, [row])[0] for _ in range(200)}
    assert drawn <= best and len(drawn) > 1


def test_top_p_restricts_samples_to_the_nucleus() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0, -1.0, -2.0]])  # the top two hold ~86 % of the mass
    row = _row(temperature=1.0, top_p=0.8, seed=1)
    assert {sample(logits, [row])[0] for _ in range(200)} == {0, 1}


def test_seeded_rows_are_reproducible_and_independent_of_companions() -> None:
    logits = _logits(rows=1, vocab=40)

    def draw(companions: int) -> list[int]:
        rows = [_row(temperature=1.0, seed=123)] + [_row(temperature=2.0) for _ in range(companions)]
        batch = torch.cat([logits, _logits(rows=companions, vocab=40, seed=9)]) if companions else logits
        return [sample(batch, rows)[0] for _ in range(20)]

    assert draw(0) == draw(3)
    assert len(set(draw(0))) > 1


@pytest.mark.parametrize(
    "kwargs",
    [{"max_new_tokens": 0}, {"temperature": -1.0}, {"temperature": float("nan")}, {"top_p": 0.0},
     {"top_p": 1.5}, {"top_k": -1}, {"repetition_penalty": 0.0}, {"seed": -1}, {"stop": ("",)},
     {"stop_token_ids": (-3,)}],
)  # fmt: skip
def test_sampling_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)  # type: ignore[arg-type]


def test_sampling_config_normalises_lists_to_tuples() -> None:
    config = SamplingConfig(stop=["x"], stop_token_ids=[5])  # type: ignore[arg-type]
    assert config.stop == ("x",) and config.stop_token_ids == (5,)


@pytest.mark.parametrize(
    "kwargs", [{"context_length": 1}, {"max_batch_size": 0}, {"max_queue": -1}, {"max_prefill_tokens": 0}]
)
def test_engine_config_rejects_bad_values(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        EngineConfig(**({"context_length": 64} | kwargs))


def _cache(length: int, fill: float) -> DynamicCache:
    cache = DynamicCache()
    values = torch.arange(length, dtype=torch.float32).view(1, 1, length, 1) + fill
    cache.update(values, -values, 0)
    return cache


def test_decode_batch_pads_left_filters_trims_and_copies_rows() -> None:
    batch: DecodeBatch[str] = DecodeBatch(torch.device("cpu"))
    batch.add([(["a"], _cache(3, 10.0), [3])])
    batch.add([(["b"], _cache(5, 20.0), [5]), (["c"], _cache(2, 30.0), [2])])
    assert batch.items == ["a", "b", "c"] and batch.width == 5
    assert batch.mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    keys = batch.cache.layers[0].keys[:, 0, :, 0]
    assert keys[0].tolist() == [0, 0, 10, 11, 12] and keys[2].tolist() == [0, 0, 0, 30, 31]
    batch.keep([2, 0])  # "b" leaves: two columns of padding go
    assert batch.items == ["c", "a"] and batch.width == 3
    assert batch.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    row = batch.row_kv(0, 0, 2)  # [layers, keys/values, heads, positions, dim]
    assert row.shape == (1, 2, 1, 2, 1)
    assert row[0, 0, 0, :, 0].tolist() == [30, 31] and row[0, 1, 0, :, 0].tolist() == [-30, -31]
    assert batch.row_kv(1, 1, 3)[0, 0, 0, :, 0].tolist() == [11, 12]
    batch.keep([])
    assert len(batch) == 0 and batch.cache is None


def test_decode_batch_adds_a_padded_group_as_one_part() -> None:
    group = DynamicCache()
    keys = torch.tensor([[0.0, 1, 2, 3], [0, 0, 5, 6]]).view(2, 1, 4, 1)
    group.update(keys, keys, 0)
    batch: DecodeBatch[str] = DecodeBatch(torch.device("cpu"))
    batch.add([(["a"], _cache(6, 10.0), [6]), (["b", "c"], group, [4, 2])])
    assert batch.items == ["a", "b", "c"] and batch.lengths == [6, 4, 2]
    assert batch.mask.tolist() == [[1] * 6, [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    assert batch.row_kv(2, 0, 2)[0, 0, 0, :, 0].tolist() == [5, 6]
    assert batch.next_mask().shape == (3, 7)


def test_prefill_groups_similar_lengths_and_pads_left() -> None:
    from llm_service.engine.prefill import PrefillJob, group_by_length, padded_inputs
    from llm_service.engine.sequence import Sequence
    from tandem.testing.engine import ScriptedModel, text_request

    model = ScriptedModel([], start=0, vocab_size=10)

    def job(length: int, done: int = 0, take: int | None = None) -> PrefillJob:
        request = text_request(model, list(range(3, 3 + length)))
        request.inputs_embeds = torch.arange(length, dtype=torch.float32)[:, None].expand(-1, 4) + 1
        out = PrefillJob(Sequence(request, lambda _: None, None, ()), None, done)  # type: ignore[arg-type]
        out.take = length - done if take is None else take
        return out

    groups = group_by_length([job(10), job(4), job(8), job(3), job(20)])
    assert [[j.take for j in g] for g in groups] == [[20], [10, 8], [4, 3]]
    embeds, positions, mask = padded_inputs(groups[1], 1, torch.float32, torch.device("cpu"))
    assert mask.tolist() == [[1] * 10, [0, 0] + [1] * 8]
    assert positions[1].tolist() == [0, 0, *range(8)] and embeds[1, :, 0].tolist() == [0, 0, *range(1, 9)]
    chunk = job(10, done=6, take=3)
    embeds, positions, mask = padded_inputs([chunk], 3, torch.float32, torch.device("cpu"))
    assert positions.shape == (3, 1, 3) and positions[2, 0].tolist() == [6, 7, 8]
    assert mask.shape == (1, 9) and embeds[0, :, 0].tolist() == [7, 8, 9]


def test_growing_layer_appends_in_place_and_survives_outside_edits() -> None:
    from transformers.cache_utils import DynamicLayer

    from llm_service.engine.kv_layer import GrowingLayer

    plain = DynamicLayer()
    plain.update(torch.ones(2, 1, 3, 4), -torch.ones(2, 1, 3, 4))
    layer = GrowingLayer.adopt(plain)
    layer.update(torch.full((2, 1, 1, 4), 2.0), torch.full((2, 1, 1, 4), -2.0))
    buffer = layer.keys.data_ptr()
    for step in range(3, 10):
        keys, _ = layer.update(torch.full((2, 1, 1, 4), float(step)), torch.zeros(2, 1, 1, 4))
        assert keys.data_ptr() == buffer  # no copy of the cache per step
    assert layer.get_seq_length() == 11
    assert layer.keys[0, 0, :, 0].tolist() == [1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert layer.values[1, 0, :4, 0].tolist() == [-1, -1, -1, -2]
    layer.keys, layer.values = layer.keys[1:, :, 2:], layer.values[1:, :, 2:]  # filtered and trimmed
    layer.update(torch.full((1, 1, 1, 4), 10.0), torch.zeros(1, 1, 1, 4))
    assert layer.keys[0, 0, :, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    layer.crop(-4)
    kept = layer.keys.data_ptr()
    layer.update(torch.full((1, 1, 1, 4), 11.0), torch.zeros(1, 1, 1, 4))
    assert layer.keys.data_ptr() == kept and layer.keys[0, 0, :, 0].tolist() == [1, 2, 3, 4, 5, 6, 11]


def test_decode_batch_joins_and_leaves_without_extra_copies() -> None:
    """A join copies each row once into the buffers decode steps append to; rows leaving without
    a trim move up in place; either way the next step writes one column, no regrowth."""
    batch: DecodeBatch[str] = DecodeBatch(torch.device("cpu"))
    batch.add([(["a"], _cache(4, 10.0), [4])])
    batch.add([(["b", "c"], _stack_rows(_cache(4, 20.0), _cache(4, 30.0)), [4, 4])])
    layer = batch.cache.layers[0]
    assert isinstance(layer, GrowingLayer) and layer.buffers is not None
    buffer = layer.buffers[0].data_ptr()
    layer.update(torch.full((3, 1, 1, 1), 9.0), torch.zeros(3, 1, 1, 1))
    batch.advance(batch.cache, batch.next_mask())
    assert batch.cache.layers[0].keys.data_ptr() == buffer  # appended in place
    batch.keep([0, 2])  # "b" leaves; nothing to trim
    kept = batch.cache.layers[0]
    assert kept.keys.data_ptr() == buffer and kept.keys[:, 0, :, 0].tolist() == [
        [10, 11, 12, 13, 9],
        [30, 31, 32, 33, 9],
    ]
    kept.update(torch.full((2, 1, 1, 1), 8.0), torch.zeros(2, 1, 1, 1))
    assert kept.keys.data_ptr() == buffer and kept.keys[1, 0, :, 0].tolist() == [30, 31, 32, 33, 9, 8]


def _stack_rows(*caches: DynamicCache) -> DynamicCache:
    out = DynamicCache()
    keys = torch.cat([c.layers[0].keys for c in caches])
    out.update(keys, -keys, 0)
    return out
