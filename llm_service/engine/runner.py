"""The model runner: runs what the scheduler decided (tensors, forward, batched KV, sampling)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from llm_service.engine.batch import DecodeBatch
from llm_service.engine.kv_layer import GrowingLayer, capacity_for
from llm_service.engine.prefill import PrefillJob, block_ids, padded_inputs
from llm_service.engine.prefix_cache import PrefixCache, extend_digests
from llm_service.engine.sampling import Sampled, sample
from llm_service.engine.sequence import Sequence
from llm_service.engine.types import LanguageModel
from tandem.metrics import Metrics

log = logging.getLogger(__name__)


class ModelRunner:
    """Owns the model and the running rows' KV (``batch``); only the engine thread calls it.

    Row ``i`` of ``batch`` is the scheduler's ``running[i]``: ``prefill`` appends the rows of
    prompts it finishes, ``retire`` keeps the rows the scheduler keeps. A method that raises
    leaves the KV it touched untrustworthy: the caller fails the rows it carried.

    KV reuse: a job with prefix-cache ``hit`` blocks starts from a copy of their KV; a finished
    prompt stores its whole blocks in the prefix cache at once (so a concurrent or later request
    sharing the prefix hits), and a finished row stores the blocks its generated tokens added
    (so the next turn of a conversation hits, sent as a session or as re-sent history).
    """

    def __init__(self, model: LanguageModel, metrics: Metrics, prefix: PrefixCache) -> None:
        self.model = model
        self.metrics = metrics
        self.prefix = prefix
        self.batch: DecodeBatch[Sequence] = DecodeBatch(model.device)

    def prefill(self, jobs: list[PrefillJob]) -> list[Sampled] | None:
        """One forward over ``jobs`` (whole prompts of one group, or a single job): the sampled
        first tokens when the prompts are done (their rows join the batch), None after a chunk."""
        start, model = time.perf_counter(), self.model
        embeds, positions, mask = padded_inputs(jobs, model.position_dims, model.dtype, model.device)
        cache = jobs[0].cache if jobs[0].cache is not None else self._restore(jobs[0])
        blocks = block_ids(jobs, mask)
        extra: dict[str, Any] = {} if blocks is None else {"blocks": blocks}  # see LanguageModel
        logits, cache = model.forward(embeds, positions, mask, cache, **extra)
        completes = jobs[0].completes  # a group is whole prompts, or a single job
        self.metrics.inc("engine_prefill_tokens", sum(job.take for job in jobs))
        for job in jobs:
            job.done, job.take, job.cache = job.done + job.take, 0, cache
        sampled = None
        if completes:
            seqs = [job.seq for job in jobs]
            self.batch.add([(seqs, cache, [seq.prompt_len for seq in seqs])])
            first = len(self.batch) - len(seqs)
            for row, seq in enumerate(seqs, start=first):
                self._store(seq, row)
            sampled = sample(logits, [s.sampler for s in seqs])
        self.metrics.observe("engine_prefill_seconds", time.perf_counter() - start)
        return sampled

    def decode(self) -> list[Sampled]:
        """One decode step for every row of the batch: each row's next token."""
        start, seqs, model = time.perf_counter(), self.batch.items, self.model
        last = torch.tensor([s.generated[-1] for s in seqs], dtype=torch.long, device=model.device)
        embeds = model.embed(last)[:, None, :].to(model.dtype)
        positions = torch.tensor([[s.last_position] for s in seqs], dtype=torch.long, device=model.device)
        if model.position_dims != 1:
            positions = positions[None].expand(model.position_dims, -1, -1)
        mask = self.batch.next_mask()
        logits, cache = model.forward(embeds, positions, mask, self.batch.cache)
        self.batch.advance(cache, mask)
        sampled = sample(logits, [s.sampler for s in seqs])
        self.metrics.observe("engine_decode_seconds", time.perf_counter() - start)
        return sampled

    def retire(self, keep: list[int], reusable: list[int]) -> None:
        """Store the KV of the ``reusable`` rows in the prefix cache, then keep only rows ``keep``."""
        for row in reusable:
            self._store(self.batch.items[row], row)
        self.batch.keep(keep)

    def clear(self) -> None:
        """Drop every row (after a failed decode step: the batch's KV cannot be trusted)."""
        self.batch.keep([])

    def _restore(self, job: PrefillJob) -> Any:
        """A new cache for ``job``: empty, or holding its prefix-cache hit's ``done`` positions in
        buffers with room for the whole prompt, so its prefill appends in place (one copy)."""
        cache = self.model.new_cache()
        if not job.hit:
            return cache
        first = job.hit[0].kv
        layers, _, heads, _, dim = first.shape
        buffer = first.new_empty(layers, 2, 1, heads, capacity_for(job.seq.prompt_len), dim)
        start = 0
        for block in job.hit:
            take = min(block.kv.shape[3], job.done - start)
            buffer[:, :, 0, :, start : start + take] = block.kv[:, :, :, :take]
            start += take
        cache.layers = [GrowingLayer.over(buffer[i, 0], buffer[i, 1], job.done) for i in range(layers)]
        job.hit = []
        return cache

    def _store(self, seq: Sequence, row: int) -> None:
        """Put ``row``'s cached positions in the prefix cache (the blocks it lacks). A failure
        here costs only reuse: it is logged, and the row and the batch go on untouched."""
        if not self.prefix.enabled or not self._uniform_layers():
            return
        tenant, keys, positions = seq.request.tenant, seq.cached_keys, seq.cached_positions()
        try:
            extend_digests(seq.block_digests, tenant, keys, positions, self.prefix.block_size)
            source = lambda start, end: self.batch.row_kv(row, start, end)  # noqa: E731
            self.prefix.insert(tenant, seq.block_digests, keys, positions, source)
        except Exception:
            request_id = seq.request.request_id
            log.exception(
                "storing %s's KV in the prefix cache failed", request_id, extra={"request_id": request_id}
            )
        self.metrics.set("prefix_cache_bytes", self.prefix.bytes)

    def _uniform_layers(self) -> bool:
        """Whether every layer's KV has one shape and dtype (a block stacks them); if not, the
        prefix cache is turned off for good."""
        shapes = {(layer.keys.shape[1:], layer.keys.dtype) for layer in self.batch.cache.layers}
        if len(shapes) > 1:
            log.warning("the model's KV layers differ in shape; the prefix cache is disabled")
            self.prefix.disable()
        return len(shapes) == 1
