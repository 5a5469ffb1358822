"""Prefill planning: which prompt positions run this step, and how they are batched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from llm_service.engine.prefix_cache import KVBlock
from llm_service.engine.sequence import Sequence
from llm_service.engine.types import EngineRequest


@dataclass(eq=False)
class PrefillJob:
    """A sequence whose prompt is (partly) still to be run through the model.

    ``done`` prompt positions are already computed: in ``cache`` (earlier chunks), or, before
    the job's first forward, in the prefix cache's ``hit`` blocks (``cache`` None); this step runs
    the next ``take`` positions. The scheduler decides ``done``/``take``; ``cache`` and ``hit``'s
    KV are the runner's.
    """

    seq: Sequence
    cache: Any
    done: int
    take: int = 0
    hit: list[KVBlock] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.seq.prompt_len - self.done

    @property
    def completes(self) -> bool:
        return self.done + self.take == self.seq.prompt_len

    @property
    def whole(self) -> bool:
        """The whole prompt runs this step from scratch: it can share a padded forward."""
        return self.done == 0 and self.completes


def group_by_length(jobs: list[PrefillJob], slack: float = 0.75) -> list[list[PrefillJob]]:
    """Split whole-prompt jobs into groups of similar length (each one padded forward).

    Longest first; a job joins the current group while its length is at least ``slack`` times
    the group's longest, so padding stays under 1/slack of the real positions.
    """
    groups: list[list[PrefillJob]] = []
    for job in sorted(jobs, key=lambda j: j.take, reverse=True):
        if groups and job.take >= slack * groups[-1][0].take:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def padded_inputs(
    jobs: list[PrefillJob], position_dims: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (inputs_embeds [B, W, H], position_ids [B, W] or [3, B, W], mask [B, past + W]).

    Each job contributes prompt positions ``done .. done + take``; with one job and a cache the
    mask also covers its ``done`` cached positions. When a job's request has ``layer_inputs``
    [L, K, H], inputs_embeds is [B, W, (1 + K) * H]: columns H.. hold them (zeros for other rows;
    see ``LanguageModel``).
    """
    width = max(job.take for job in jobs)
    hidden = jobs[0].seq.request.inputs_embeds.shape[1]
    layers = [job.seq.request.layer_inputs for job in jobs]
    extra = max((t.shape[1] * t.shape[2] for t in layers if t is not None), default=0)
    embeds = torch.zeros(len(jobs), width, hidden + extra, dtype=dtype, device=device)
    positions = torch.zeros(position_dims, len(jobs), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(jobs), width, dtype=torch.long, device=device)
    for row, job in enumerate(jobs):
        request, span = job.seq.request, slice(job.done, job.done + job.take)
        embeds[row, width - job.take :, :hidden] = request.inputs_embeds[span].to(device, dtype)
        if (layer := layers[row]) is not None:
            embeds[row, width - job.take :, hidden:] = layer[span].flatten(1).to(device, dtype)
        positions[:, row, width - job.take :] = request.position_ids[:, span].to(device)
        mask[row, width - job.take :] = 1
    if len(jobs) == 1 and jobs[0].done:
        mask = torch.cat([torch.ones(1, jobs[0].done, dtype=torch.long, device=device), mask], dim=1)
    return embeds, positions[0] if position_dims == 1 else positions, mask


def block_ids(jobs: list[PrefillJob], mask: torch.Tensor) -> torch.Tensor | None:
    """Each mask column's attention-block number (-1: none), or None when no block is prefilled.

    Columns line up with ``padded_inputs``' mask: a row's ``take`` new positions are its last
    columns. Blocks never straddle a chunk boundary (``chunk_take``), so cached columns are -1.
    """
    if not any(job.seq.request.attention_blocks for job in jobs):
        return None  # the common case: no family asked for blocks
    ids = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    for row, job in enumerate(jobs):
        first = mask.shape[1] - job.take  # column of prompt position job.done
        for number, (start, end) in enumerate(job.seq.request.attention_blocks):
            lo, hi = max(start, job.done), min(end, job.done + job.take)
            if lo < hi:
                ids[row, first + lo - job.done : first + hi - job.done] = number
    return ids if bool((ids >= 0).any()) else None


def chunk_take(job: PrefillJob, budget: int) -> int:
    """Positions to prefill now: up to ``budget``, but a chunk that would end inside an attention
    block ends before it (or, when the block starts the chunk, after it)."""
    end = job.done + min(job.remaining, budget)
    for start, stop in job.seq.request.attention_blocks:
        if start < end < stop:
            end = start if start > job.done else stop
    return end - job.done


def reusable_length(request: EngineRequest, n: int) -> int:
    """``n`` cached prompt positions backed off so that they never end inside an image (a run of
    negative keys) or an attention block: the first position to prefill starts one, or is text."""
    keys, moved = request.prompt_keys, True
    while n > 0 and moved:
        moved = False
        for start, end in request.attention_blocks:
            if start < n < end:
                n, moved = start, True
        if 0 < n < len(keys) and keys[n - 1] < 0 and keys[n] < 0:
            while n > 0 and keys[n - 1] < 0:
                n -= 1
            moved = True
    return n
