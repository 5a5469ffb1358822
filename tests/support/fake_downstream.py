"""An in-process stand-in for ``gateway.downstream.Downstream`` (no gRPC), and a gateway over it
with the in-memory session store (no Redis): the turn pipeline as plain objects.

It has the methods the gateway calls (``encode``, ``generate``, ``release_session``,
``language_info``, ``vision_info``), records every call, and is scripted through its fields: an error to raise
before (``fail``) or after (``fail_after_first``) the first chunk, embeddings that are
"evicted" (a ref without an inline record then gets ``NotFound``, as from the language
service), refs that carry their embedding even unasked (``inline``: the shared cache did not
take it), a finish reason, and a ``hold`` event that keeps a generation waiting after its
first chunk. Its answer is "u<number of user messages>" then ``chunks - 1`` dots.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from gateway.deadline import Deadline
from gateway.fetch import FetchPolicy, UrlFetcher
from gateway.media_guard import MediaGuard, MediaLimits
from gateway.messages import Chunk, FinishReason, ImageInput, ImageRef, Message, ModelInfo, Sampling, Usage
from gateway.pipeline import Pipeline
from gateway.service import Gateway
from gateway.session_memory import MemorySessionStore
from gateway.sessions import Sessions, SessionSettings
from tandem.errors import NotFound, TandemError

TOKENS_PER_IMAGE = 4
MAX_IMAGES = 4
MODEL = ModelInfo("fake", "FakeForConditionalGeneration", True, "f" * 16, 4096)


def image_id(data: bytes) -> str:
    """The id the vision service gives ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Generation:
    """What one ``generate`` call received."""

    messages: tuple[Message, ...]
    sampling: Sampling
    request_id: str
    session_id: str
    deadline: Deadline
    tenant: str


@dataclass
class FakeDownstream:
    """Encodes to ``TOKENS_PER_IMAGE``-token refs and answers by counting user messages."""

    model: ModelInfo = MODEL
    chunks: int = 3
    finish: FinishReason | None = "stop"
    fail: TandemError | None = None
    fail_after_first: TandemError | None = None
    evicted: set[str] = field(default_factory=set)
    inline: bool = False
    hold: asyncio.Event | None = None
    encodes: list[tuple[tuple[ImageInput, ...], bool]] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    released: list[tuple[str, str]] = field(default_factory=list)
    known: set[str] = field(default_factory=set)
    closed: int = 0

    async def language_info(self, timeout: float) -> ModelInfo:
        return self.model

    async def vision_info(self, timeout: float) -> ModelInfo:
        return self.model

    async def encode(
        self, images: Sequence[ImageInput], force_inline: bool, deadline: Deadline, scope: str = ""
    ) -> list[ImageRef]:
        self.encodes.append((tuple(images), force_inline))
        self.scopes.append(scope)
        refs = []
        for image in images:
            ident = image_id(image.data) if image.data is not None else image.image_id or ""
            if image.data is None and ident not in self.known:
                raise NotFound("unknown image id; send the image again")
            self.known.add(ident)
            inline = b"embedding" if force_inline or self.inline else b""
            refs.append(ImageRef(ident, TOKENS_PER_IMAGE, inline_record=inline))
        return refs

    async def generate(
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        request_id: str,
        session_id: str,
        deadline: Deadline,
        tenant: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        self.generations.append(
            Generation(tuple(messages), sampling, request_id, session_id, deadline, tenant)
        )
        if self.fail is not None:
            raise self.fail
        refs = [p for m in messages for p in m.parts if isinstance(p, ImageRef)]
        if any(r.image_id in self.evicted and not r.inline_record for r in refs):
            raise NotFound("embedding not in the cache")
        users = sum(m.role == "user" for m in messages)
        try:
            for i in range(self.chunks):
                yield Chunk(f"u{users}" if i == 0 else ".", (i,))
                if i == 0:
                    await self._after_first()
            if self.finish is not None:
                usage = Usage(10, TOKENS_PER_IMAGE * len(refs), self.chunks)
                yield Chunk(finish_reason=self.finish, usage=usage)
        finally:
            self.closed += 1

    async def release_session(self, session_id: str, tenant: str, timeout: float) -> None:
        self.released.append((session_id, tenant))

    async def _after_first(self) -> None:
        if self.hold is not None:
            await self.hold.wait()
        if self.fail_after_first is not None:
            raise self.fail_after_first


async def chunks_of(stream: AsyncGenerator[Chunk, None]) -> list[Chunk]:
    """Every chunk of a gateway stream, in order."""
    return [chunk async for chunk in stream]


def gateway_over(downstream: FakeDownstream, max_request_seconds: float = 0.0) -> Gateway:
    """A ready gateway (its model discovered) over ``downstream`` and an in-memory session store;
    at most ``MAX_IMAGES`` images a request, no URL is ever fetched."""
    guard = MediaGuard(MediaLimits(max_images=MAX_IMAGES), UrlFetcher(FetchPolicy()))
    pipeline = Pipeline(guard, downstream)  # type: ignore[arg-type]
    pipeline.model = downstream.model
    return Gateway(pipeline, Sessions(MemorySessionStore(), SessionSettings()), max_request_seconds)
