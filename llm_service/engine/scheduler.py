"""The scheduler: what runs each step, and what each step's tokens mean for their requests.

It decides (admission, fair queueing, the prefill budget and its chunks, which rows decode, which
retire) and delivers (events to each request's sink); it never touches the model or a tensor.
``ModelRunner`` (runner.py) runs what it decides; ``EngineCore`` (core.py) ties the two together.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from llm_service.engine.fair_queue import FairQueue
from llm_service.engine.prefill import PrefillJob, chunk_take, group_by_length, reusable_length
from llm_service.engine.prefix_cache import KVBlock, PrefixCache, extend_digests
from llm_service.engine.sampling import Sampled
from llm_service.engine.sequence import Sequence, SequenceStatus
from llm_service.engine.types import EngineConfig, GenerationFailed
from tandem.errors import Overloaded, Unavailable
from tandem.metrics import Metrics

log = logging.getLogger(__name__)

TEXT_FAILED_MESSAGE = "turning this request's tokens into text failed; generation stopped"


class Scheduler:
    """Continuous batching decisions over the waiting and running sequences.

    ``submit``/``cancel``/``shutdown``/``wait_for_work`` may be called from any thread;
    everything else runs on the engine thread. ``running[i]`` is row ``i`` of the runner's decode
    batch: both change only through ``retire`` (rows kept, in order) and ``prefilled`` (rows
    appended), which ``EngineCore`` applies to both sides.

    A step (driven by ``EngineCore``): ``retire`` finished and cancelled rows (a cancelled queued
    request is dropped unseen: never prefilled); ``schedule_prefill`` picks up to
    ``max_prefill_tokens`` prompt positions (the partly prefilled prompt first, then queued
    requests while batch slots last, fairly across tenants: ``FairQueue``, at most
    ``EngineConfig.tenant_cap`` rows per tenant while another tenant waits), grouping whole fresh
    prompts of similar length and chunking a prompt larger than the budget left; ``prefilled``
    puts a finished prompt's first token out and its row in the batch; then every running row
    decodes (``decoded``).

    A row whose token cannot be sampled (``GenerationFailed``) or whose text step raises (stop
    strings, detokenisation) fails alone; the others keep streaming.
    """

    def __init__(self, config: EngineConfig, metrics: Metrics, prefix: PrefixCache) -> None:
        self.config = config
        self.metrics = metrics
        self.prefix = prefix
        self.running: list[Sequence] = []
        self.partial: PrefillJob | None = None  # a prompt prefilled in chunks, between two steps
        self._waiting = FairQueue()
        self._cond = threading.Condition()
        self._stopping = False

    # -- any thread ---------------------------------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._stopping:
                raise Unavailable("the language engine is not running")
            free_slots = max(0, self.config.max_batch_size - self.num_running)
            if len(self._waiting) >= self.config.max_queue + free_slots:
                self.metrics.inc("engine_overloaded")
                raise Overloaded(f"too many waiting requests ({self.config.max_queue}); retry later")
            self._waiting.append(seq)
            self._cond.notify()
        self.set_gauges()

    def cancel(self, seq: Sequence) -> None:
        seq.cancelled = True
        with self._cond:
            self._cond.notify()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self.running) + (self.partial is not None)

    def shutdown(self) -> None:
        """Make ``wait_for_work`` return False (the loop stops after its current step)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def wait_for_work(self) -> bool:
        """Sleep until a sequence waits or runs; False once ``shutdown`` was called."""
        with self._cond:
            while not self._stopping and not self._waiting and not self.num_running:
                self._cond.wait()
            return not self._stopping

    # -- engine thread --------------------------------------------------------------------------
    def drain(self) -> list[Sequence]:
        """Every queued, partly prefilled and running sequence; the scheduler forgets them all."""
        with self._cond:
            queued = self._waiting.drain()
        partial = [self.partial.seq] if self.partial else []
        seqs, self.partial, self.running = queued + partial + self.running, None, []
        return seqs

    def retire(self) -> tuple[list[int], list[int]]:
        """Drop finished and cancelled rows (a cancelled one gets its final "cancelled" event).

        Returns (the rows that stay, in order; the finished rows whose KV may be kept for reuse).
        """
        keep, reusable = [], []
        for row, seq in enumerate(self.running):
            if seq.done:
                if seq.status is SequenceStatus.FINISHED:
                    reusable.append(row)
            elif seq.cancelled:
                self._cancelled(seq)
            else:
                keep.append(row)
        self.running = [self.running[row] for row in keep]
        return keep, reusable

    def schedule_prefill(self) -> list[list[PrefillJob]]:
        """This step's prefill work, as groups that each run as one forward."""
        jobs = self._plan()
        whole = [job for job in jobs if job.whole]
        return group_by_length(whole) + [[job] for job in jobs if not job.whole]

    def _plan(self) -> list[PrefillJob]:
        """The partial prompt first, then queued requests, fairly, within the prefill budget."""
        budget, jobs = self.config.max_prefill_tokens, list[PrefillJob]()
        partial, self.partial = self.partial, None
        if partial is not None and partial.seq.cancelled:
            self._cancelled(partial.seq)
            partial = None
        running = Counter(seq.request.tenant for seq in self.running)
        while budget > 0 and len(self.running) + len(jobs) < self.config.max_batch_size:
            job = partial if partial is not None else self._start(self._next_queued(running))
            if job is None:
                break
            partial, job.take = None, chunk_take(job, budget)
            budget -= job.take
            running[job.seq.request.tenant] += 1
            jobs.append(job)
        return jobs

    def _next_queued(self, running: Counter[str]) -> Sequence | None:
        with self._cond:
            return self._waiting.pop(running, self.config.tenant_cap, self._cancelled)

    def _start(self, seq: Sequence | None) -> PrefillJob | None:
        """A job for a newly admitted sequence, starting after its prefix-cache hit if any."""
        if seq is None:
            return None
        self.metrics.observe("engine_queue_seconds", time.perf_counter() - seq.submitted_at)
        hit, done = self._lookup(seq)
        seq.cached_tokens, seq.status = done, SequenceStatus.PREFILLING
        return PrefillJob(seq, None, done, hit=hit)

    def _lookup(self, seq: Sequence) -> tuple[list[KVBlock], int]:
        """The prefix-cache blocks a prompt can start from and how many positions they give: the
        longest cached prefix, ending before the prompt's last position (its logits are needed)
        and never inside an image or an attention block."""
        if not self.prefix.enabled:
            return [], 0
        request, size = seq.request, self.prefix.block_size
        keys, positions = request.prompt_keys, request.position_ids
        extend_digests(seq.block_digests, request.tenant, keys, positions, size)
        blocks, length = self.prefix.match(request.tenant, seq.block_digests, keys, positions)
        done = reusable_length(request, min(length, seq.prompt_len - 1))
        return blocks[: -(-done // size)], done

    def prefilled(self, jobs: list[PrefillJob], sampled: list[Sampled] | None) -> None:
        """Record a prefill forward: a chunk waits for the next step (``sampled`` None); finished
        prompts join the running rows (appended in order) and put their first token out."""
        if sampled is None:
            self.partial = jobs[0]
            return
        seqs = [job.seq for job in jobs]
        for seq in seqs:
            seq.status = SequenceStatus.RUNNING
        self.running += seqs
        for seq, token in zip(seqs, sampled, strict=True):
            self._deliver(seq, token)
        self.metrics.inc("prompt_tokens", sum(seq.prompt_len for seq in seqs))
        self.metrics.inc("cached_prompt_tokens", sum(seq.cached_tokens for seq in seqs))
        self.metrics.inc("engine_prefills", len(seqs))

    def decoded(self, seqs: list[Sequence], sampled: list[Sampled]) -> None:
        """Put out one decode step's tokens (a row cancelled meanwhile gets none)."""
        for seq, token in zip(seqs, sampled, strict=True):
            if not seq.cancelled:
                self._deliver(seq, token)

    def fail(self, seqs: list[Sequence], error: BaseException) -> None:
        """Deliver ``error`` to ``seqs``: they are done (``retire`` drops running ones)."""
        for seq in seqs:
            seq.status = SequenceStatus.FAILED
            seq.sink(error)

    def set_gauges(self) -> None:
        self.metrics.set("num_requests_waiting", self.num_waiting)
        self.metrics.set("num_requests_running", self.num_running)

    def _cancelled(self, seq: Sequence) -> None:
        log.debug(
            "request %s cancelled after %d tokens",
            seq.request.request_id,
            len(seq.generated),
            extra=_ids(seq),
        )
        self.metrics.inc("engine_cancelled")
        seq.sink(seq.cancel_event())

    def _deliver(self, seq: Sequence, token: Sampled) -> None:
        """Emit one row's token; a row that cannot go on fails alone (see the class doc)."""
        if isinstance(token, GenerationFailed):
            log.warning("request %s failed alone: %s", seq.request.request_id, token, extra=_ids(seq))
            self.fail([seq], token)
            return
        try:
            self._emit(seq, token)
        except Exception:
            log.exception(
                "request %s failed alone while processing its output", seq.request.request_id, extra=_ids(seq)
            )
            self.fail([seq], GenerationFailed(TEXT_FAILED_MESSAGE))

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


def _ids(seq: Sequence) -> dict[str, str]:
    """Log ``extra`` naming the request (this thread has no request context to take it from)."""
    return {"request_id": seq.request.request_id}
