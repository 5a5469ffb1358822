"""The engine's public face: validation, admission, streaming to asyncio, the engine thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq

import torch
from transformers import PreTrainedTokenizerBase

from llm_service.engine.core import EngineCore
from llm_service.engine.sequence import Sequence
from llm_service.engine.types import EngineConfig, EngineRequest, LanguageModel, SamplingConfig, TokenEvent
from tandem.errors import InvalidInput, TandemError, Unavailable
from tandem.metrics import Metrics

log = logging.getLogger(__name__)


class Engine:
    """Continuous-batching generation over one ``LanguageModel``, streamed to asyncio callers.

    Lifecycle: ``Engine(...)`` -> ``warmup()`` (optional; works before or after ``start``) ->
    ``start()`` (the engine thread that alone runs the model, ``EngineCore``) -> ``generate(...)`` from any
    number of asyncio tasks -> ``stop()`` (queued and running requests get ``Unavailable``).

    ``generate`` validates before any work (``InvalidInput``), refuses at once when
    ``max_queue`` requests already wait (``Overloaded``), then yields ``TokenEvent``s as the
    scheduler produces them. Cancelling the consuming task or closing the generator cancels the
    request: a queued one is never prefilled, a running one leaves the batch at the next step.
    """

    def __init__(
        self,
        model: LanguageModel,
        tokenizer: PreTrainedTokenizerBase,
        config: EngineConfig,
        eos_token_ids: Seq[int],
        metrics: Metrics | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.eos_token_ids = tuple(eos_token_ids)
        self.metrics = metrics if metrics is not None else Metrics()
        self._core = EngineCore(model, config, self.metrics)
        self._thread: threading.Thread | None = None
        self._failure: str | None = None

    @property
    def running(self) -> int:
        """Sequences in the decode batch."""
        return self._core.scheduler.num_running

    @property
    def waiting(self) -> int:
        """Requests queued for a batch slot."""
        return self._core.scheduler.num_waiting

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine was already started")
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._core.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._core.fail_all(Unavailable("the language engine stopped"))

    def failure(self) -> str | None:
        return self._failure

    def _run(self) -> None:
        try:
            self._core.run()
        except BaseException as exc:
            log.exception("the engine's loop crashed")
            self._failure = f"the language engine's loop crashed ({type(exc).__name__})"
            self._core.shutdown()
            self._core.fail_all(Unavailable("the language engine failed"))
            raise

    async def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]:
        """Stream ``request``'s tokens; the last event carries finish_reason and usage."""
        self._validate(request)
        if self._thread is None:
            raise Unavailable("the language engine is not started")
        if self._failure is not None:
            raise Unavailable("the language engine failed; this replica is restarting, retry on another")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()

        def sink(item: TokenEvent | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's loop is closed: nobody listens any more
                seq.cancelled = True

        seq = Sequence(request, sink, self.tokenizer, self.eos_token_ids)
        self._core.submit(seq)
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, TandemError):
                    finished = True
                    raise item
                if isinstance(item, BaseException):
                    finished = True
                    raise RuntimeError("generation failed in the language engine") from item
                finished = item.finish_reason is not None
                yield item
        finally:
            if not finished:
                self._core.cancel(seq)

    def _validate(self, request: EngineRequest) -> None:
        n, sampling = len(request.prompt_keys), request.sampling
        if n == 0:
            raise InvalidInput("the prompt is empty")
        if len(request.prompt_token_ids) != n:
            raise InvalidInput(f"prompt_token_ids has {len(request.prompt_token_ids)} entries, expected {n}")
        if tuple(request.inputs_embeds.shape) != (n, self.model.hidden_size):
            raise InvalidInput(f"inputs_embeds must be [{n}, {self.model.hidden_size}]")
        if tuple(request.position_ids.shape) != (self.model.position_dims, n):
            raise InvalidInput(f"position_ids must be [{self.model.position_dims}, {n}]")
        if any(t >= self.model.vocab_size for t in sampling.stop_token_ids):
            raise InvalidInput(
                f"stop_token_ids must be token ids below the vocabulary size ({self.model.vocab_size})"
            )
        if n + sampling.max_new_tokens > self.config.context_length:
            raise InvalidInput(
                f"the prompt ({n} tokens) plus max_new_tokens ({sampling.max_new_tokens}) exceeds "
                f"the context length ({self.config.context_length}); lower max_new_tokens or shorten "
                "the conversation"
            )

    def warmup(self) -> None:
        """Run one short dummy generation through the whole path (before reporting SERVING)."""
        ids = [0, 1, 2, 3]
        with torch.inference_mode():
            embeds = self.model.embed(torch.tensor(ids, device=self.model.device))
        positions = torch.arange(len(ids)).expand(self.model.position_dims, -1)
        request = EngineRequest(
            "warmup", ids, ids, embeds, positions, len(ids), SamplingConfig(max_new_tokens=2)
        )
        done, results = threading.Event(), []

        def sink(item: TokenEvent | BaseException) -> None:
            results.append(item)
            if isinstance(item, BaseException) or item.finish_reason is not None:
                done.set()

        self._core.submit(Sequence(request, sink, self.tokenizer, ()))
        if self._thread is not None:
            while not done.wait(0.05):
                if not self._thread.is_alive():
                    raise Unavailable("the language engine is not running")
        else:
            with torch.inference_mode():
                while not done.is_set():
                    self._core.step()
        if isinstance(results[-1], BaseException):
            raise RuntimeError("engine warm-up failed") from results[-1]
