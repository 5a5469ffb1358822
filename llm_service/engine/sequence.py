"""One request's generation state, from admission to its final event."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable

import torch

from llm_service.engine.detokenizer import Decoder, IncrementalDetokenizer
from llm_service.engine.sampling import RowSampler
from llm_service.engine.stop import StopStringFilter
from llm_service.engine.types import EngineRequest, FinishReason, TokenEvent, Usage

Sink = Callable[[TokenEvent | BaseException], None]
"""Where a sequence's events go; called on the scheduler thread, must not block."""


class SequenceStatus(enum.Enum):
    """Where a sequence is in its life; only the engine thread changes it."""

    WAITING = enum.auto()  # queued for a batch slot
    PREFILLING = enum.auto()  # admitted; its prompt runs through the model (maybe over several steps)
    RUNNING = enum.auto()  # in the decode batch: one token per step
    FINISHED = enum.auto()  # ended (stop / length); its final event is sent
    CANCELLED = enum.auto()  # its caller left; its "cancelled" event is sent
    FAILED = enum.auto()  # its error is sent

    @property
    def is_finished(self) -> bool:
        return self in (SequenceStatus.FINISHED, SequenceStatus.CANCELLED, SequenceStatus.FAILED)


class Sequence:
    """A request being generated: its tokens, text state and where its events go.

    Lifecycle (``status``): WAITING (queued) -> PREFILLING (prompt in the model, possibly over
    several steps) -> RUNNING (first token sampled; decoded one token per step) -> FINISHED
    (stop / length), or CANCELLED / FAILED from any live state. ``cancelled`` is the caller's
    request to stop and may be set from any thread; the scheduler sees it at the next step and
    moves the sequence to CANCELLED. Every other field belongs to the engine thread.
    """

    def __init__(
        self, request: EngineRequest, sink: Sink, tokenizer: Decoder, eos_ids: Iterable[int]
    ) -> None:
        self.request = request
        self.sink = sink
        self.sampler = RowSampler(request.sampling, request.prompt_token_ids)
        self.generated: list[int] = []
        self.cached_tokens = 0  # prompt positions whose KV came from the prefix cache
        self.block_digests: list[bytes] = []  # of its whole cached blocks so far (prefix_cache.py)
        self.submitted_at = time.perf_counter()  # made when submitted: its queueing starts here
        self.last_token_at: float | None = None  # perf_counter() of the last token (time per token)
        self.cancelled = False
        self.status = SequenceStatus.WAITING
        eos = () if request.sampling.ignore_eos else eos_ids
        self._stop_ids = frozenset(eos) | frozenset(request.sampling.stop_token_ids)
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

    def cached_positions(self) -> torch.Tensor:
        """Position ids [dims, len(cached_keys)] of the positions in its KV cache."""
        positions, fed = self.request.position_ids, len(self.generated) - 1
        if fed <= 0:
            return positions
        start = self.request.next_position
        generated = torch.arange(start, start + fed, dtype=positions.dtype).expand(positions.shape[0], -1)
        return torch.cat([positions, generated], dim=1)

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

    @property
    def done(self) -> bool:
        """Its final event or error is sent: nothing more happens to it."""
        return self.status.is_finished

    def _finish(self, token_ids: list[int], text: str, reason: FinishReason) -> TokenEvent:
        self.status = SequenceStatus.CANCELLED if reason == "cancelled" else SequenceStatus.FINISHED
        usage = Usage(
            prompt_tokens=self.prompt_len,
            image_tokens=self.request.image_tokens,
            completion_tokens=len(self.generated),
            cached_tokens=self.cached_tokens,
        )
        return TokenEvent(token_ids, text, reason, usage)
