"""The engine thread's loop: each step the scheduler decides, the runner runs, the scheduler delivers."""

from __future__ import annotations

import logging

import torch

from llm_service.engine.prefill import PrefillJob
from llm_service.engine.prefix_cache import PrefixCache
from llm_service.engine.runner import ModelRunner
from llm_service.engine.scheduler import Scheduler
from llm_service.engine.sequence import Sequence
from llm_service.engine.types import EngineConfig, LanguageModel
from tandem.metrics import Metrics

log = logging.getLogger(__name__)


class EngineCore:
    """Continuous batching over one ``LanguageModel``: a ``Scheduler`` and a ``ModelRunner``.

    ``submit``/``cancel``/``shutdown`` may be called from any thread; ``run`` (the engine
    thread) or ``step`` (a caller's thread when no engine thread runs) do the rest.

    Failures stay as narrow as the state they spoil: a failed forward fails every row it carried
    (one prefill group, or the whole decode batch), since it may have half-updated the shared KV
    cache and no row's state can be trusted; retrying rows one by one would need each row's KV
    rebuilt from its prompt, which is a new request's work. Per-row failures are the
    scheduler's (see ``Scheduler``).
    """

    def __init__(self, model: LanguageModel, config: EngineConfig, metrics: Metrics) -> None:
        self.prefix = PrefixCache(config.prefix_cache_bytes, config.prefix_block_size)
        self.scheduler = Scheduler(config, metrics, self.prefix)
        self.runner = ModelRunner(model, metrics, self.prefix)

    def submit(self, seq: Sequence) -> None:
        self.scheduler.submit(seq)

    def cancel(self, seq: Sequence) -> None:
        self.scheduler.cancel(seq)

    def shutdown(self) -> None:
        """Stop the loop after its current step."""
        self.scheduler.shutdown()

    def run(self) -> None:
        """Step until ``shutdown``; sleeps while there is nothing to do."""
        with torch.inference_mode():
            while self.scheduler.wait_for_work():
                self.step()

    def fail_all(self, error: BaseException) -> None:
        """Deliver ``error`` to every queued and running sequence and forget them."""
        self.scheduler.fail(self.scheduler.drain(), error)
        self.runner.clear()
        self.scheduler.set_gauges()

    def step(self) -> None:
        self._retire()
        for group in self.scheduler.schedule_prefill():
            self._prefill(group)
        self._retire()
        if self.scheduler.running:
            self._decode()
            self._retire()
        self.scheduler.set_gauges()

    def _retire(self) -> None:
        keep, reusable = self.scheduler.retire()
        self.runner.retire(keep, reusable)

    def _prefill(self, group: list[PrefillJob]) -> None:
        try:
            sampled = self.runner.prefill(group)
        except Exception as exc:
            log.exception("prefill failed for %d request(s)", len(group))
            self.scheduler.fail([job.seq for job in group], exc)
            return
        self.scheduler.prefilled(group, sampled)

    def _decode(self) -> None:
        seqs = list(self.scheduler.running)
        try:
            sampled = self.runner.decode()
        except Exception as exc:
            log.exception("decode step failed; failing the %d running requests", len(seqs))
            self.scheduler.fail(seqs, exc)
            return
        self.scheduler.decoded(seqs, sampled)
