"""One request's generation state, from admission to its final event."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llm_service.engine.detokenizer import Decoder, IncrementalDetokenizer
from llm_service.engine.sampling import RowSampler
from llm_service.engine.stop import StopStringFilter
from llm_service.engine.types import EngineRequest, FinishReason, TokenEvent, Usage

Sink = Callable[[TokenEvent | BaseException], None]
"""Where a sequence's events go; called on the scheduler thread, must not block."""


class Sequence:
    """A request being generated: its tokens, text state and where its events go.

    Lifecycle: created by the engine, queued, prefilled (first token), decoded one token per
    step, then done (stop / length) or cancelled. ``cancelled`` may be set from any thread; the
    scheduler sees it at the next step. Every other field belongs to the scheduler thread.
    """

    def __init__(
        self, request: EngineRequest, sink: Sink, tokenizer: Decoder, eos_ids: Iterable[int]
    ) -> None:
        self.request = request
        self.sink = sink
        self.sampler = RowSampler(request.sampling, request.prompt_token_ids)
        self.generated: list[int] = []
        self.cached_tokens = 0
        self.last_token_at: float | None = None  # perf_counter() of the last token (time per token)
        self.cancelled = False
        self.done = False
        self.failed = False
        self._stop_ids = frozenset(eos_ids) | frozenset(request.sampling.stop_token_ids)
        self._detokenizer = IncrementalDetokenizer(tokenizer)
        self._stops = StopStringFilter(request.sampling.stop)

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_keys)

    @property
    def last_position(self) -> int:
        """Position of the newest generated token (the next decode step's input)."""
        return self.request.next_position + len(self.generated) - 1

    @property
    def cached_keys(self) -> list[int]:
        """Keys of the positions in this sequence's KV cache (the last token is not fed yet)."""
        return self.request.prompt_keys + self.generated[:-1]

    def accept(self, token_id: int) -> TokenEvent:
        """Record a sampled token; return its event (the final one if this token ends generation)."""
        self.generated.append(token_id)
        self.sampler.history.append(token_id)
        if token_id in self._stop_ids:
            return self._end([token_id], "", "stop")
        text, matched = self._stops.push(self._detokenizer.push(token_id))
        if matched:
            return self._finish([token_id], text, "stop")
        if len(self.generated) >= self.request.sampling.max_new_tokens:
            return self._end([token_id], text, "length")
        return TokenEvent([token_id], text)

    def _end(self, token_ids: list[int], text: str, reason: FinishReason) -> TokenEvent:
        """Finish, releasing held-back text (unless it completes a stop string: then cut there)."""
        tail, matched = self._stops.push(self._detokenizer.flush())
        if matched:
            return self._finish(token_ids, text + tail, "stop")
        return self._finish(token_ids, text + tail + self._stops.flush(), reason)

    def cancel_event(self) -> TokenEvent:
        return self._finish([], "", "cancelled")

    def _finish(self, token_ids: list[int], text: str, reason: FinishReason) -> TokenEvent:
        self.done = True
        usage = Usage(
            prompt_tokens=self.prompt_len,
            image_tokens=self.request.image_tokens,
            completion_tokens=len(self.generated),
            cached_tokens=self.cached_tokens,
        )
        return TokenEvent(token_ids, text, reason, usage)
