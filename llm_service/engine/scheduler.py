"""The scheduler loop: the one thread that runs the model (admit, prefill, batched decode, retire)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

import torch

from llm_service.engine.batch import DecodeBatch
from llm_service.engine.fair_queue import FairQueue
from llm_service.engine.prefill import PrefillJob, block_ids, chunk_take, group_by_length, padded_inputs
from llm_service.engine.sampling import Sampled, sample
from llm_service.engine.sequence import Sequence
from llm_service.engine.session_cache import SessionCache
from llm_service.engine.types import EngineConfig, GenerationFailed, LanguageModel
from tandem.errors import Overloaded, Unavailable
from tandem.metrics import Metrics

log = logging.getLogger(__name__)

TEXT_FAILED_MESSAGE = "turning this request's tokens into text failed; generation stopped"


class Scheduler:
    """Continuous batching over one ``LanguageModel``.

    ``submit``/``cancel`` may be called from any thread; everything else runs on the scheduler
    thread (``run``), or on the caller's thread when no scheduler thread runs (``step``).

    One step: retire finished and cancelled rows (a cancelled queued request is dropped unseen:
    never prefilled); prefill up to ``max_prefill_tokens`` prompt positions (whole fresh prompts
    of similar length share one padded forward; a session's next turn runs only the suffix after
    its reused KV; a prompt larger than the budget left is prefilled in chunks over several
    steps, one at a time); a sequence whose prompt is done samples its first token and joins the
    batch; then one decode step for the whole batch. A row finishing with a session id leaves
    its KV in the session cache. Queued requests are admitted fairly across tenants
    (``FairQueue``: round robin, at most ``EngineConfig.tenant_cap`` rows per tenant while
    another tenant waits).

    Failures stay as narrow as the state they spoil. A row whose token cannot be sampled
    (non-finite scores) or whose text step raises (stop strings, detokenisation) fails alone
    with ``GenerationFailed``; the others keep streaming. A failed forward fails every row it
    carried (one prefill group, or the whole decode batch): it may have half-updated the shared
    KV cache, so no row's state can be trusted, and retrying rows one by one would need each
    row's KV rebuilt from its prompt, which is a new request's work.
    """

    def __init__(self, model: LanguageModel, config: EngineConfig, metrics: Metrics) -> None:
        self.model = model
        self.config = config
        self.metrics = metrics
        self.sessions = SessionCache(config.session_cache_entries)
        self.batch: DecodeBatch[Sequence] = DecodeBatch(model.new_cache, model.device)
        self._inbox = FairQueue()
        self._partial: PrefillJob | None = None
        self._cond = threading.Condition()
        self._stopping = False

    # -- any thread ---------------------------------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._stopping:
                raise Unavailable("the language engine is not running")
            free_slots = max(0, self.config.max_batch_size - self.running)
            if len(self._inbox) >= self.config.max_queue + free_slots:
                self.metrics.inc("engine_overloaded")
                raise Overloaded(f"too many waiting requests ({self.config.max_queue}); retry later")
            self._inbox.append(seq)
            self._cond.notify()
        self._set_gauges()

    def cancel(self, seq: Sequence) -> None:
        seq.cancelled = True
        with self._cond:
            self._cond.notify()

    @property
    def waiting(self) -> int:
        return len(self._inbox)

    @property
    def running(self) -> int:
        return len(self.batch) + (self._partial is not None)

    def shutdown(self) -> None:
        """Stop the loop after its current step."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    # -- scheduler thread ---------------------------------------------------------------------
    def run(self) -> None:
        """Step until ``shutdown``; sleeps while there is nothing to do."""
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not self._inbox and not self.running:
                        self._cond.wait()
                    if self._stopping:
                        return
                self.step()

    def fail_all(self, error: BaseException) -> None:
        """Deliver ``error`` to every queued and running sequence and forget them."""
        with self._cond:
            queued = self._inbox.drain()
        partial = [self._partial.seq] if self._partial else []
        self._fail(queued + partial + self.batch.items, error)
        self._partial = None
        self.batch.keep([])
        self._set_gauges()

    def step(self) -> None:
        self._retire()
        self._admit()
        self._retire()
        if len(self.batch):
            self._decode()
            self._retire()
        self._set_gauges()

    def _retire(self) -> None:
        """Drop finished rows (keeping session KV) and cancelled ones (final "cancelled" event)."""
        keep = []
        for row, seq in enumerate(self.batch.items):
            if seq.done:
                if not seq.failed:
                    self._remember(seq, row)
            elif seq.cancelled:
                self._cancelled(seq)
            else:
                keep.append(row)
        self.batch.keep(keep)

    def _cancelled(self, seq: Sequence) -> None:
        log.debug(
            "request %s cancelled after %d tokens",
            seq.request.request_id,
            len(seq.generated),
            extra=_ids(seq),
        )
        self.metrics.inc("engine_cancelled")
        seq.sink(seq.cancel_event())

    def _fail(self, seqs: list[Sequence], error: BaseException) -> None:
        for seq in seqs:
            seq.done = seq.failed = True
            seq.sink(error)

    def _next_queued(self, running: Counter[str]) -> Sequence | None:
        with self._cond:
            return self._inbox.pop(running, self.config.tenant_cap, self._cancelled)

    def _plan(self) -> list[PrefillJob]:
        """This step's prefill work: the partial prompt first, then queued requests, fairly."""
        budget, jobs = self.config.max_prefill_tokens, list[PrefillJob]()
        partial, self._partial = self._partial, None
        if partial is not None and partial.seq.cancelled:
            self._cancelled(partial.seq)
            partial = None
        running = Counter(seq.request.tenant for seq in self.batch.items)
        while budget > 0 and len(self.batch) + len(jobs) < self.config.max_batch_size:
            job = partial if partial is not None else self._start(self._next_queued(running))
            if job is None:
                break
            partial, job.take = None, chunk_take(job, budget)
            budget -= job.take
            running[job.seq.request.tenant] += 1
            jobs.append(job)
        return jobs

    def _start(self, seq: Sequence | None) -> PrefillJob | None:
        """A job for a newly admitted sequence, with its session's reusable KV if any."""
        if seq is None:
            return None
        request = seq.request
        reused = self.sessions.take(request.session_id, request.prompt_keys) if request.session_id else None
        cache, done = reused if reused is not None else (None, 0)
        seq.cached_tokens = done
        return PrefillJob(seq, cache, done)

    def _admit(self) -> None:
        jobs = self._plan()
        whole = [job for job in jobs if job.whole]
        groups = group_by_length(whole) + [[job] for job in jobs if not job.whole]
        for group in groups:
            try:
                self._prefill(group)
            except Exception as exc:
                log.exception("prefill failed for %d request(s)", len(group))
                self._fail([job.seq for job in group], exc)

    def _prefill(self, jobs: list[PrefillJob]) -> None:
        """One forward over ``jobs``; completed prompts sample their first token and join the batch."""
        start, model = time.perf_counter(), self.model
        embeds, positions, mask = padded_inputs(jobs, model.position_dims, model.dtype, model.device)
        cache = jobs[0].cache if jobs[0].cache is not None else model.new_cache()
        blocks = block_ids(jobs, mask)
        extra: dict[str, Any] = {} if blocks is None else {"blocks": blocks}  # see LanguageModel
        logits, cache = model.forward(embeds, positions, mask, cache, **extra)
        completes = jobs[0].completes  # a group is whole prompts, or a single job
        self.metrics.inc("engine_prefill_tokens", sum(job.take for job in jobs))
        for job in jobs:
            job.done, job.take, job.cache = job.done + job.take, 0, cache
        if not completes:
            self._partial = jobs[0]
        else:
            seqs = [job.seq for job in jobs]
            self.batch.add([(seqs, cache, [seq.prompt_len for seq in seqs])])
            for seq, token in zip(seqs, sample(logits, [s.sampler for s in seqs]), strict=True):
                self._deliver(seq, token)
            self.metrics.inc("prompt_tokens", sum(seq.prompt_len for seq in seqs))
            self.metrics.inc("cached_prompt_tokens", sum(seq.cached_tokens for seq in seqs))
            self.metrics.inc("engine_prefills", len(seqs))
        self.metrics.observe("engine_prefill_seconds", time.perf_counter() - start)

    def _decode(self) -> None:
        start, seqs, model = time.perf_counter(), self.batch.items, self.model
        try:
            last = torch.tensor([s.generated[-1] for s in seqs], dtype=torch.long, device=model.device)
            embeds = model.embed(last)[:, None, :].to(model.dtype)
            positions = torch.tensor([[s.last_position] for s in seqs], dtype=torch.long, device=model.device)
            if model.position_dims != 1:
                positions = positions[None].expand(model.position_dims, -1, -1)
            mask = self.batch.next_mask()
            logits, cache = model.forward(embeds, positions, mask, self.batch.cache)
            self.batch.advance(cache, mask)
        except Exception as exc:
            log.exception("decode step failed; failing the %d running requests", len(seqs))
            self._fail(seqs, exc)
            self.batch.keep([])
            return
        for seq, token in zip(seqs, sample(logits, [s.sampler for s in seqs]), strict=True):
            if not seq.cancelled:
                self._deliver(seq, token)
        self.metrics.observe("engine_decode_seconds", time.perf_counter() - start)

    def _deliver(self, seq: Sequence, token: Sampled) -> None:
        """Emit one row's token; a row that cannot go on fails alone (see the class doc)."""
        if isinstance(token, GenerationFailed):
            log.warning("request %s failed alone: %s", seq.request.request_id, token, extra=_ids(seq))
            self._fail([seq], token)
            return
        try:
            self._emit(seq, token)
        except Exception:
            log.exception(
                "request %s failed alone while processing its output", seq.request.request_id, extra=_ids(seq)
            )
            self._fail([seq], GenerationFailed(TEXT_FAILED_MESSAGE))

    def _emit(self, seq: Sequence, token: int) -> None:
        now = time.perf_counter()
        if seq.last_token_at is not None:
            self.metrics.observe("time_per_output_token_seconds", now - seq.last_token_at)
        seq.last_token_at = now
        event = seq.accept(token)
        self.metrics.inc("generation_tokens")
        if event.finish_reason is not None:
            self.metrics.inc("request_success", finished_reason=event.finish_reason)
            log.debug(
                "request %s finished (%s): %r",
                seq.request.request_id,
                event.finish_reason,
                event.usage,
                extra=_ids(seq),
            )
        seq.sink(event)

    def _remember(self, seq: Sequence, row: int) -> None:
        """Keep a finished row's KV for its session's next turn."""
        if seq.request.session_id is None or self.config.session_cache_entries == 0:
            return
        self.sessions.put(seq.request.session_id, seq.cached_keys, self.batch.extract(row))

    def _set_gauges(self) -> None:
        self.metrics.set("num_requests_waiting", self.waiting)
        self.metrics.set("num_requests_running", self.running)


def _ids(seq: Sequence) -> dict[str, str]:
    """Log ``extra`` naming the request (this thread has no request context to take it from)."""
    return {"request_id": seq.request.request_id}
