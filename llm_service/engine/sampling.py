"""Token selection for a batch of rows, each with its own sampling settings and random stream.

Scores are processed in float32, whatever the model's dtype. A row whose scores cannot be
sampled (NaN or +inf after the repetition penalty and temperature, or no finite score at all)
gets a ``GenerationFailed`` in place of its token, so it fails alone and the other rows of the
batch are untouched.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence

import torch

from llm_service.engine.types import GenerationFailed, SamplingConfig

log = logging.getLogger(__name__)

Sampled = int | GenerationFailed
"""A row's token, or why the row cannot go on."""

NON_FINITE_MESSAGE = (
    "the model's scores for this request are not finite (NaN or infinity), so no token can be "
    "sampled; generation stopped"
)


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


def sample(logits: torch.Tensor, rows: Sequence[RowSampler]) -> list[Sampled]:
    """One token per row of ``logits`` [B, V] (repetition penalty, then greedy or sampled).

    Never raises for one row's sake. The rows are processed together; should that raise (a
    value no check foresaw), each row is processed again alone. Rows draw from their generators
    only at the very end, one by one, so a retried seeded row draws what it would have drawn.
    """
    try:
        return _sample(logits, rows)
    except Exception:
        if len(rows) == 1:
            log.exception("sampling failed for one row")
            return [GenerationFailed("sampling failed for this request; generation stopped")]
        log.exception("batched sampling failed; sampling the %d rows one by one", len(rows))
        return [sample(logits[i : i + 1], [row])[0] for i, row in enumerate(rows)]


def _sample(logits: torch.Tensor, rows: Sequence[RowSampler]) -> list[Sampled]:
    scores = _apply_repetition_penalty(logits.float(), rows)
    best, usable = _best(scores)
    tokens: list[Sampled] = [
        token if ok else GenerationFailed(NON_FINITE_MESSAGE) for token, ok in zip(best, usable, strict=True)
    ]
    sampled = [i for i, row in enumerate(rows) if not row.config.greedy and usable[i]]
    if sampled:
        probs = _probabilities(scores[sampled], [rows[i].config for i in sampled])
        _, drawable = _best(probs)
        for j, i in enumerate(sampled):
            tokens[i] = _draw(probs[j], rows[i]) if drawable[j] else GenerationFailed(NON_FINITE_MESSAGE)
    return tokens


def _best(scores: torch.Tensor) -> tuple[list[int], list[bool]]:
    """Per row: the argmax (the first of equal maxima) and whether the row is usable: no NaN, no
    +inf, at least one finite value (-inf marks impossible tokens). One pass over the scores and
    one copy to the host: a row's max is NaN if it holds one (max propagates NaN), +inf if it
    holds that, -inf if nothing is finite, so the row is usable exactly when its max is finite."""
    values, indices = scores.max(dim=-1)
    both = torch.stack([indices, values.isfinite().long()]).tolist()
    return both[0], [bool(ok) for ok in both[1]]


def _draw(probs: torch.Tensor, row: RowSampler) -> Sampled:
    try:
        return int(torch.multinomial(probs, 1, generator=row.generator)[0])
    except Exception:  # caught here, per row, so that no retry ever draws twice
        log.exception("drawing a token failed for one row")
        return GenerationFailed("sampling failed for this request; generation stopped")


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
