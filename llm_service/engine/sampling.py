"""Token selection for a batch of rows, each with its own sampling settings and random stream."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

from llm_service.engine.types import SamplingConfig


class RowSampler:
    """One request's sampling state: its settings, its own ``torch.Generator``, its token history.

    The generator is seeded from ``config.seed`` (or fresh entropy), and only this row draws from
    it, so a seeded request samples the same tokens whatever else shares its batch.
    """

    def __init__(self, config: SamplingConfig, prompt_token_ids: Sequence[int]) -> None:
        self.config = config
        self.history: list[int] = list(prompt_token_ids)
        self.generator: torch.Generator | None = None
        if not config.greedy:
            self.generator = torch.Generator()
            seed = config.seed if config.seed is not None else secrets.randbits(63)
            self.generator.manual_seed(seed)


def sample(logits: torch.Tensor, rows: Sequence[RowSampler]) -> list[int]:
    """Pick one token per row of ``logits`` [B, V] (repetition penalty, then greedy or sampled)."""
    scores = _apply_repetition_penalty(logits.float(), rows)
    tokens = scores.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if not row.config.greedy]
    if sampled:
        probs = _probabilities(scores[sampled], [rows[i].config for i in sampled])
        for j, i in enumerate(sampled):
            tokens[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
    return tokens.tolist()


def _apply_repetition_penalty(scores: torch.Tensor, rows: Sequence[RowSampler]) -> torch.Tensor:
    """HF/CTRL rule on every token seen so far (prompt included): divide if > 0, multiply if < 0."""
    penalised = [i for i, row in enumerate(rows) if row.config.repetition_penalty != 1.0 and row.history]
    if not penalised:
        return scores
    scores = scores.clone()
    for i in penalised:
        row, penalty = rows[i], rows[i].config.repetition_penalty
        seen = torch.tensor(row.history, dtype=torch.long, device=scores.device)
        seen = seen[(seen >= 0) & (seen < scores.shape[-1])]
        values = scores[i].gather(0, seen)
        scores[i].scatter_(0, seen, torch.where(values < 0, values * penalty, values / penalty))
    return scores


def _probabilities(scores: torch.Tensor, configs: list[SamplingConfig]) -> torch.Tensor:
    """Temperature, then top-k and top-p (nucleus) filtering, vectorised over rows; softmax."""
    temperature = torch.tensor([c.temperature for c in configs], dtype=scores.dtype, device=scores.device)
    scores = scores / temperature[:, None]
    vocab = scores.shape[-1]
    if any(c.top_k > 0 or c.top_p < 1.0 for c in configs):
        ordered, order = scores.sort(dim=-1, descending=True)
        top_k = torch.tensor([c.top_k if c.top_k > 0 else vocab for c in configs], device=scores.device)
        rank = torch.arange(vocab, device=scores.device)
        ordered = ordered.masked_fill(rank[None, :] >= top_k[:, None], float("-inf"))
        top_p = torch.tensor([c.top_p for c in configs], dtype=scores.dtype, device=scores.device)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly better tokens
        ordered = ordered.masked_fill(before > top_p[:, None], float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter_(-1, order, ordered)
    return scores.softmax(dim=-1)
