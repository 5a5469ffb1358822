"""``tandem bench serve``: run a workload against an OpenAI-compatible server.

Lifecycle: resolve the model (``GET /models`` when none is given), run the warm-up conversations
one at a time (not recorded), then start every measured conversation at its arrival time (Poisson
at ``request_rate``, or all at once), at most ``max_concurrency`` at a time. A conversation's turns
run one after another: with ``sessions`` each turn sends only its new user message to a Tandem
session; otherwise each turn re-sends the whole history (earlier user turns and the replies the
server gave), as any OpenAI client does. A failed turn ends its conversation (its later turns are
recorded as failed, unsent). The run's duration runs from the first arrival to the last reply;
creating and deleting a session count in it, not in any request's timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tandem.bench.arrivals import arrival_times
from tandem.bench.client import (
    Endpoint,
    ServerError,
    create_session,
    delete_session,
    first_model,
    stream_chat,
)
from tandem.bench.dataset import Conversation, DatasetConfig, Turn
from tandem.bench.metrics import RequestRecord, Slo

if TYPE_CHECKING:
    import aiohttp


@dataclass(frozen=True)
class ServeConfig:
    """One ``tandem bench serve`` run (``dataset.num_conversations`` conversations of
    ``dataset.turns`` turns each)."""

    base_url: str
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # further replicas of the same model: conversation i goes to replica i mod N (client-side
    # round robin, a conversation stays on its replica), e.g. two `vllm serve` without a balancer
    more_base_urls: tuple[str, ...] = ()
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    request_rate: float = math.inf
    max_concurrency: int | None = None
    warmups: int = 1
    sessions: bool = False
    ignore_eos: bool = False
    temperature: float = 0.0
    request_timeout_s: float = 600.0
    slo: Slo | None = None

    def __post_init__(self) -> None:
        if not self.request_rate > 0:
            raise ValueError(f"{self.request_rate=} must be > 0 (inf: all at once)")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"{self.max_concurrency=} must be >= 1")
        if self.warmups < 0:
            raise ValueError(f"{self.warmups=} must be >= 0")
        if self.request_timeout_s <= 0:
            raise ValueError(f"{self.request_timeout_s=} must be > 0")


@dataclass
class ServeOutcome:
    """What a run produced: the model it used, every measured request, and its duration."""

    model: str
    records: list[RequestRecord]
    duration_s: float


def user_message(turn: Turn) -> dict[str, Any]:
    """One turn as an OpenAI user message: its images as ``image_url`` parts, then its text."""
    if not turn.images:
        return {"role": "user", "content": turn.text}
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": image.data_url}} for image in turn.images
    ]
    return {"role": "user", "content": [*parts, {"type": "text", "text": turn.text}]}


class ServeRunner:
    """Runs conversations against an endpoint (or several, round robin); ``on_request`` is called
    after each measured request (the progress bar), ``on_measured`` (in a thread) between the
    warm-up and the measured requests (the metrics scrape the run's server figures start from)."""

    def __init__(
        self,
        config: ServeConfig,
        on_request: Callable[[RequestRecord], None] = lambda _: None,
        on_measured: Callable[[], None] | None = None,
    ):
        self.config = config
        urls = (config.base_url, *config.more_base_urls)
        self.endpoints = [Endpoint.of(url, config.api_key) for url in urls]
        self.endpoint = self.endpoints[0]  # the model is asked of the first
        self.on_request = on_request
        self.on_measured = on_measured

    async def run(self, measured: list[Conversation], warmup: list[Conversation]) -> ServeOutcome:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.config.request_timeout_s)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            model = self.config.model or await first_model(http, self.endpoint)
            await self._warm_up(http, model, warmup)
            if self.on_measured is not None:
                await asyncio.to_thread(self.on_measured)
            records: list[RequestRecord] = []
            started = time.perf_counter()
            await self._measured(http, model, measured, records, started)
            duration = time.perf_counter() - started
        return ServeOutcome(model, records, duration)

    async def _warm_up(self, http: aiohttp.ClientSession, model: str, warmup: list[Conversation]) -> None:
        """Run the warm-up conversations one at a time; a failed one stops the run."""
        for conversation in warmup:
            records: list[RequestRecord] = []
            await self._conversation(http, model, conversation, records, measured=False)
            if failed := [r for r in records if not r.success]:
                raise ServerError(f"a warm-up request failed: {failed[0].error}")

    async def _measured(
        self,
        http: aiohttp.ClientSession,
        model: str,
        conversations: list[Conversation],
        records: list[RequestRecord],
        started: float,
    ) -> None:
        limit = asyncio.Semaphore(self.config.max_concurrency or len(conversations) or 1)
        offsets = arrival_times(len(conversations), self.config.request_rate, self.config.dataset.seed)

        async def one(conversation: Conversation, offset: float) -> None:
            await asyncio.sleep(max(0.0, started + offset - time.perf_counter()))
            async with limit:
                await self._conversation(http, model, conversation, records, started)

        await asyncio.gather(*(one(c, t) for c, t in zip(conversations, offsets, strict=True)))

    async def _conversation(
        self,
        http: aiohttp.ClientSession,
        model: str,
        conversation: Conversation,
        records: list[RequestRecord],
        started: float = 0.0,
        measured: bool = True,
    ) -> None:
        """Run the turns in order, appending one record per turn (``on_request`` too when
        ``measured``). A failure (of a turn, or of creating the session) marks the turns left
        failed, without sending them."""
        endpoint = self.endpoints[conversation.index % len(self.endpoints)]
        session_id: str | None = None
        history: list[dict[str, Any]] = []
        error = ""
        try:
            session_id = await create_session(http, endpoint) if self.config.sessions else None
        except Exception as exc:  # the conversation fails, the run goes on
            error = f"creating the session failed: {type(exc).__name__}: {exc}"[:500]
        for index, turn in enumerate(conversation.turns):
            record = RequestRecord(conversation.index, index, error=error)
            if not error:
                message = user_message(turn)
                body = self._body(model, turn, [message] if session_id else [*history, message])
                if session_id:
                    body["session_id"] = session_id
                record.started = time.perf_counter() - started
                await stream_chat(http, endpoint, body, record)
                error = "" if record.success else f"skipped: turn {index} failed"
                history += [message, {"role": "assistant", "content": record.text}]
            records.append(record)
            if measured:
                self.on_request(record)
        if session_id:
            with contextlib.suppress(Exception):  # a session left behind expires on its TTL
                await delete_session(http, endpoint, session_id)

    def _body(self, model: str, turn: Turn, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": turn.output_len,
            "temperature": self.config.temperature,
        }
        if self.config.ignore_eos:
            body["ignore_eos"] = True
        return body
