"""Prefill planning around bidirectional attention blocks: chunks never end inside a block, and
each mask column gets its block number (pure logic, fake sequences)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import torch

from llm_service.engine.prefill import PrefillJob, block_ids, chunk_take

BLOCKS = ((4, 8), (10, 14))


def _job(
    done: int, take: int = 0, blocks: tuple[tuple[int, int], ...] = BLOCKS, length: int = 20
) -> PrefillJob:
    seq = SimpleNamespace(prompt_len=length, request=SimpleNamespace(attention_blocks=blocks))
    return PrefillJob(cast(Any, seq), None, done, take)


def test_a_chunk_ending_inside_a_block_ends_before_it() -> None:
    assert chunk_take(_job(0), 6) == 4
    assert chunk_take(_job(8), 4) == 2


def test_a_chunk_starting_a_block_takes_all_of_it_even_over_budget() -> None:
    assert chunk_take(_job(4), 2) == 4
    assert chunk_take(_job(10), 1) == 4


def test_chunks_on_block_edges_or_without_blocks_take_the_budget() -> None:
    assert chunk_take(_job(0), 8) == 8
    assert chunk_take(_job(0, blocks=()), 6) == 6
    assert chunk_take(_job(14), 100) == 6  # the rest of the prompt


def test_block_ids_follow_the_left_padded_columns() -> None:
    jobs = [_job(0, 16), _job(8, 6)]  # the second row: prompt positions 8..13, padded in front
    mask = torch.ones(2, 16, dtype=torch.long)
    ids = block_ids(jobs, mask)
    assert ids is not None
    assert ids[0].tolist() == [-1] * 4 + [0] * 4 + [-1] * 2 + [1] * 4 + [-1] * 2
    assert ids[1].tolist() == [-1] * 12 + [1] * 4


def test_no_block_in_the_chunk_means_no_block_ids() -> None:
    assert block_ids([_job(14, 6)], torch.ones(1, 20, dtype=torch.long)) is None
