"""``VllmEngine``: vLLM's ``AsyncLLM`` behind the interface of Tandem's own engine.

The worker builds the same ``EngineRequest``s for both engines; this one sends their token ids
and image embeddings to vLLM (``request.py``) and turns vLLM's streamed deltas into
``TokenEvent``s. Errors come back in Tandem's vocabulary: a full queue is ``Overloaded``, a
request vLLM refuses ``InvalidInput``, a dead engine ``Unavailable``, a failed generation
``GenerationFailed``. The engine metrics are the built-in engine's (``num_requests_running`` counts
what vLLM holds, running or waiting; ``prompt_tokens``, ``cached_prompt_tokens`` from vLLM's
prefix cache, ``generation_tokens``, ``request_success``, ``time_per_output_token_seconds``,
``engine_cancelled``, ``engine_overloaded``), so one dashboard reads both.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import torch
from vllm import AsyncEngineArgs
from vllm.exceptions import GracefulHTTPError, VLLMClientError
from vllm.outputs import RequestOutput
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from llm_service.engine.types import EngineRequest, FinishReason, GenerationFailed, TokenEvent, Usage
from llm_service.vllm_engine.families import VllmFamily
from llm_service.vllm_engine.options import VllmOptions
from llm_service.vllm_engine.request import sampling_params, vllm_prompt
from tandem.errors import InvalidInput, Overloaded, TandemError, Unavailable
from tandem.metrics import Metrics

log = logging.getLogger(__name__)


class VllmEngine:
    """Generation on vLLM (``llm_service.engine.Engine``'s interface; see the module docstring).

    Lifecycle: ``VllmEngine(...)`` -> ``start()`` (blocking: vLLM loads the weights and sizes its
    KV cache; run it off the event loop) -> ``generate(...)`` from any number of asyncio tasks
    of one event loop -> ``stop()``. ``warmup()`` does nothing: vLLM warms itself in ``start``,
    and the worker's own warm-up request runs the whole path.

    Admission: vLLM refuses a request while ``max_batch_size + max_queue`` are unfinished
    (``Overloaded``). Leaving ``generate`` early (cancel, deadline, closed stream) aborts the
    request in vLLM.
    """

    def __init__(
        self, options: VllmOptions, family: VllmFamily, vocab_size: int, metrics: Metrics | None = None
    ) -> None:
        self.options = options
        self.family = family
        self.vocab_size = vocab_size
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.watch("num_requests_running", lambda: float(self.unfinished))
        self._llm: Any = None  # AsyncLLM once started
        self._dtype = torch.float32
        self._ids = itertools.count()

    @property
    def unfinished(self) -> int:
        """Requests vLLM holds (running or waiting)."""
        return 0 if self._llm is None else int(self._llm.get_num_unfinished_requests())

    def start(self) -> None:
        if self._llm is not None:
            raise RuntimeError("the engine was already started")
        kwargs = self.options.engine_kwargs(on_cpu=current_platform.is_cpu())
        log.info("starting vLLM (%s): %s", current_platform.device_name, _loggable(kwargs))
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        self._dtype = self._llm.model_config.dtype

    def stop(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()

    def warmup(self) -> None:
        """Nothing to do (see the class docstring)."""

    def failure(self) -> str | None:
        """Set once vLLM's engine core died (``AsyncLLM.errored``)."""
        if self._llm is not None and self._llm.errored:
            return "the vLLM engine died"
        return None

    async def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]:
        """Stream ``request``'s tokens; the last event carries finish_reason and usage."""
        self._validate(request)
        if self._llm is None:
            raise Unavailable("the language engine is not started")
        prompt = vllm_prompt(request, self.family, self._dtype)
        stream = self._llm.generate(
            prompt, sampling_params(request.sampling), f"{request.request_id}-{next(self._ids)}"
        )
        generated, finished, last = 0, False, 0.0
        try:
            async with contextlib.aclosing(stream):  # leaving early aborts the request in vLLM
                while True:
                    output = await _next(stream)
                    if output is None:
                        return
                    completion = output.outputs[0]
                    generated += len(completion.token_ids)
                    last = self._token_times(last, len(completion.token_ids))
                    if not output.finished:
                        yield TokenEvent(list(completion.token_ids), completion.text)
                        continue
                    finished = True
                    usage = Usage(
                        prompt_tokens=len(request.prompt_token_ids),
                        image_tokens=request.image_tokens,
                        completion_tokens=generated,
                        cached_tokens=output.num_cached_tokens or 0,  # vLLM's prefix-cache hits
                    )
                    reason = _finish_reason(completion.finish_reason)
                    self._count(usage, reason)
                    yield TokenEvent(list(completion.token_ids), completion.text, reason, usage)
                    return
        except Overloaded:
            self.metrics.inc("engine_overloaded")
            raise
        except (GeneratorExit, asyncio.CancelledError):
            if not finished:
                self.metrics.inc("engine_cancelled")
            raise

    def _token_times(self, last: float, count: int) -> float:
        """Observe the time per output token since the previous output (none for the first)."""
        now = time.monotonic()
        if last and count:
            gap = (now - last) / count
            for _ in range(count):
                self.metrics.observe("time_per_output_token_seconds", gap)
        return now

    def _count(self, usage: Usage, reason: FinishReason) -> None:
        self.metrics.inc("prompt_tokens", usage.prompt_tokens)
        self.metrics.inc("cached_prompt_tokens", usage.cached_tokens)
        self.metrics.inc("generation_tokens", usage.completion_tokens)
        self.metrics.inc("request_success", finished_reason=reason)

    def _validate(self, request: EngineRequest) -> None:
        n, sampling = len(request.prompt_token_ids), request.sampling
        if n == 0:
            raise InvalidInput("the prompt is empty")
        if any(t >= self.vocab_size for t in sampling.stop_token_ids):
            raise InvalidInput(
                f"stop_token_ids must be token ids below the vocabulary size ({self.vocab_size})"
            )
        if n + sampling.max_new_tokens > self.options.context_length:
            raise InvalidInput(
                f"the prompt ({n} tokens) plus max_new_tokens ({sampling.max_new_tokens}) exceeds "
                f"the context length ({self.options.context_length}); lower max_new_tokens or shorten "
                "the conversation"
            )


async def _next(stream: AsyncIterator[RequestOutput]) -> RequestOutput | None:
    """The stream's next output (None at its end), vLLM's errors in Tandem's vocabulary."""
    try:
        return await anext(stream, None)
    except TandemError:
        raise
    except (GracefulHTTPError, EngineDeadError, EngineGenerateError, VLLMClientError, ValueError) as exc:
        raise _translate(exc) from exc


def _translate(exc: Exception) -> TandemError:
    if isinstance(exc, GracefulHTTPError):  # queue full (max_num_queued_reqs / queued tokens)
        return Overloaded(f"the language engine is busy: {exc.message}")
    if isinstance(exc, EngineDeadError):
        return Unavailable("the vLLM engine died; the worker must be restarted")
    if isinstance(exc, EngineGenerateError):
        return GenerationFailed("generation failed in the vLLM engine")
    return InvalidInput(f"vLLM refused the request: {exc}")


def _finish_reason(reason: str | None) -> FinishReason:
    if reason == "stop":
        return "stop"
    if reason == "length":
        return "length"
    if reason == "abort":  # aborted inside vLLM, not by this caller (who is gone by then)
        return "cancelled"
    raise GenerationFailed(f"generation ended in the vLLM engine with {reason!r}")


def _loggable(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in sorted(kwargs.items()))
