"""``Gateway``: the domain behind the public API (one-off generation, session turns, info).

A session turn streams its answer while holding the session's turn lock, and commits the
turn (user message with image refs, assistant answer, ``CommittedTurn`` for retries) before
it yields the final chunk: a client that has seen ``finish_reason`` knows the turn is saved.
A turn that fails, is cancelled, or ends with ``FINISH_REASON_CANCELLED`` is not committed.

Every generation is measured here, for gRPC and HTTP callers alike: time to first token and
end-to-end latency (``tandem_time_to_first_token_seconds``, ``tandem_e2e_request_latency_seconds``)
and, for the request's access-log line, its usage; sessions count creations, deletions, replays
and commit outcomes. A request without a client request id uses the one its log lines carry.

Every call names its tenant (the API key's name; "" without keys), passed in by the servicer
and the HTTP handlers. Sessions are the tenant's own (``Sessions``). An image named by id must
be one the tenant sent (its claim, recorded when the bytes came in) or one its session holds;
otherwise it is NOT_FOUND with the same message as an id nobody sent, so ids are no oracle of
other tenants' images. The stored-bytes limit is checked before a request can add to them, and
a deleted session's KV is dropped by the language replica that holds it (best effort).
A retried turn (same request id) must repeat the same input (``input_digest``).

A session turn's images are kept in the state role (``gateway.session_images``, given as
``images``) before it generates, and recalled from there when the cache has lost them, so a
live session stays answerable whatever the cache evicts. Without ``images`` (logic tests) the
cache alone holds them.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Sequence

from gateway.deadline import Deadline
from gateway.messages import Chunk, ImageRef, ImageSource, Message, ModelInfo, Part, Sampling, Usage
from gateway.pipeline import Encoded, Pipeline
from gateway.session_images import SessionImages
from gateway.sessions import CommittedTurn, Sessions, SessionState, Turn, input_digest
from tandem.embeddings.ids import is_image_id
from tandem.errors import Conflict, InvalidInput, NotFound, Unavailable
from tandem.metrics import Metrics
from tandem.serving import request_context

log = logging.getLogger(__name__)

UNKNOWN_IMAGE = "unknown image_id; send the image bytes again (an id names an image this API key sent)"
_RELEASE_SECONDS = 2.0


class Gateway:
    """Generation and sessions over a ``Pipeline`` and a ``Sessions`` store."""

    def __init__(
        self,
        pipeline: Pipeline,
        sessions: Sessions,
        max_request_seconds: float = 0.0,
        metrics: Metrics | None = None,
        images: SessionImages | None = None,
    ):
        self.pipeline = pipeline
        self.sessions = sessions
        self.max_request_seconds = max_request_seconds
        self.metrics = metrics if metrics is not None else Metrics()
        self.images = images

    def model_info(self) -> ModelInfo:
        return self.pipeline.require_model()

    async def generate(
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        request_id: str,
        deadline: Deadline,
        tenant: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        """Answer a conversation without a session."""
        started = time.monotonic()
        deadline = deadline.capped(self.max_request_seconds)
        images = [image for m in messages for image in m.images()]
        await self._check_images(tenant, images, held=())
        if any(isinstance(i, ImageSource) and not i.image_id for i in images):
            await self._storage_room(tenant)
        encoded = await self.pipeline.prepare(messages, deadline, tenant)
        await self._claim(tenant, encoded)
        stream = self.pipeline.stream(encoded, sampling, _generation_id(request_id), "", deadline, tenant)
        async with contextlib.aclosing(self._measured(stream, started)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def chat(
        self,
        session_id: str,
        parts: Sequence[Part],
        sampling: Sampling,
        request_id: str,
        deadline: Deadline,
        tenant: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        """One user turn of a session; a known ``request_id`` replays the committed answer (the
        same input only: another one under that id is ``PreconditionFailed``)."""
        if not parts:
            raise InvalidInput("the turn is empty; send at least one text or image part")
        started = time.monotonic()
        deadline = deadline.capped(self.max_request_seconds)
        digest = input_digest(parts, sampling)
        if request_id:  # a retry of a committed turn is answered without waiting for the lock
            done = (await self.sessions.get(session_id, tenant)).find_turn(request_id)
            if done is not None:
                yield self._replay(done, digest)
                return
        await self.sessions.check_storage(tenant)
        async with self.sessions.turn(session_id, tenant) as turn:
            done = turn.state.find_turn(request_id)
            if done is not None:
                yield self._replay(done, digest)
                return
            user = Message("user", tuple(parts))
            await self._check_images(tenant, user.images(), held=turn.state.image_ids())
            recall = self.images.recall if self.images is not None else None
            encoded = await self.pipeline.prepare([*turn.state.messages, user], deadline, tenant, recall)
            await self._claim(tenant, encoded)
            await self._keep_images(turn.state, encoded)
            run = self._run_turn(turn, encoded, sampling, request_id, deadline, digest)
            async with contextlib.aclosing(self._measured(run, started)) as chunks:
                async for chunk in chunks:
                    yield chunk

    def _replay(self, done: CommittedTurn, digest: str) -> Chunk:
        chunk = done.replay(digest)
        self.metrics.inc("session_replays")
        request_context.usage(done.usage.prompt_tokens, done.usage.completion_tokens)
        return chunk

    async def _check_images(
        self, tenant: str, images: Sequence[ImageSource | ImageRef], held: Sequence[str]
    ) -> None:
        """``NotFound`` (as for an unknown id) unless ``tenant`` sent every image named by id,
        or its session ``held`` it; malformed ids are left to the media guard's message."""
        named = [
            i.image_id
            for i in images
            if isinstance(i, ImageSource) and is_image_id(i.image_id) and i.image_id not in held
        ]
        if named and not await self.sessions.store.has_images(tenant, named):
            raise NotFound(UNKNOWN_IMAGE)

    async def _storage_room(self, tenant: str) -> None:
        """The stored-bytes limit, for a request without a session (whose images are kept for
        a while); a store that cannot be reached does not stop it (it keeps nothing then)."""
        try:
            await self.sessions.check_storage(tenant)
        except Unavailable:
            log.warning("could not check the stored bytes of a tenant: the session store is down")

    async def _claim(self, tenant: str, encoded: Encoded) -> None:
        """Record that ``tenant`` sent the request's new images (best effort, logged)."""
        if not (images := encoded.new_images()):
            return
        try:
            await self.sessions.store.claim_images(tenant, images, self.sessions.settings.default_ttl_seconds)
        except Unavailable:
            log.warning("could not record %d new images of a tenant: the session store is down", len(images))

    async def _keep_images(self, state: SessionState, encoded: Encoded) -> None:
        """Keep the bytes of the turn's images in the state role for the session's TTL."""
        refs = [p for p in encoded.messages[-1].parts if isinstance(p, ImageRef)]
        if self.images is None or not refs:
            return
        inputs = encoded.inputs[len(encoded.inputs) - len(refs) :]
        kept = [(r.image_id, i.data) for r, i in zip(refs, inputs, strict=True)]
        await self.images.keep(kept, state.ttl_seconds)

    async def _measured(
        self, chunks: AsyncGenerator[Chunk, None], started: float
    ) -> AsyncGenerator[Chunk, None]:
        """``chunks``, with the time to the first token and to the last recorded."""
        first = True
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if first and (chunk.token_ids or chunk.text):
                    first = False
                    self.metrics.observe("time_to_first_token_seconds", time.monotonic() - started)
                    request_context.first_output()
                if chunk.is_final:
                    self.metrics.observe("e2e_request_latency_seconds", time.monotonic() - started)
                    if chunk.usage is not None:
                        request_context.usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                yield chunk

    async def _run_turn(
        self,
        turn: Turn,
        encoded: Encoded,
        sampling: Sampling,
        request_id: str,
        deadline: Deadline,
        digest: str,
    ) -> AsyncGenerator[Chunk, None]:
        session_id, tenant = turn.state.session_id, turn.state.tenant
        generation_id = _generation_id(request_id)
        stream = self.pipeline.stream(encoded, sampling, generation_id, session_id, deadline, tenant)
        text: list[str] = []
        tokens: list[int] = []
        async with contextlib.aclosing(stream) as chunks:
            async for chunk in chunks:
                text.append(chunk.text)
                tokens.extend(chunk.token_ids)
                if chunk.finish_reason in ("stop", "length"):
                    answer = CommittedTurn(
                        request_id,
                        "".join(text),
                        tuple(tokens),
                        chunk.finish_reason or "stop",
                        chunk.usage or Usage(),
                        encoded.new_image_ids,
                        digest,
                    )
                    await self._commit(turn, _stored_user(encoded), answer)
                yield chunk
                if chunk.is_final:
                    return
        raise Unavailable("the answer ended before it was complete; the turn was not saved, retry it")

    async def _commit(self, turn: Turn, user: Message, answer: CommittedTurn) -> None:
        """``turn.commit``, counted by outcome."""
        outcome = "failed"  # the store could not be reached
        try:
            await turn.commit(user, answer)
            outcome = "committed"
        except NotFound:
            outcome = "gone"
            raise
        except Conflict:
            outcome = "conflict"
            raise
        finally:
            self.metrics.inc("session_commits", outcome=outcome)

    async def create_session(self, system_prompt: str, ttl_seconds: int, tenant: str = "") -> SessionState:
        state = await self.sessions.create(system_prompt, ttl_seconds, tenant)
        self.metrics.inc("sessions_created")
        return state

    async def get_session(self, session_id: str, tenant: str = "") -> SessionState:
        return await self.sessions.get(session_id, tenant)

    async def list_sessions(
        self, page_size: int, page_token: str, tenant: str = ""
    ) -> tuple[list[SessionState], str]:
        return await self.sessions.list_page(page_size, page_token, tenant)

    async def delete_session(self, session_id: str, tenant: str = "") -> None:
        """Delete the session with its image claims; its replica drops its KV (best effort)."""
        await self.sessions.delete(session_id, tenant)
        self.metrics.inc("sessions_deleted")
        await self.pipeline.downstream.release_session(session_id, tenant, _RELEASE_SECONDS)


def _generation_id(request_id: str) -> str:
    """The id the language service gets: the client's, else the request's log id, else new."""
    return request_id or request_context.current_request_id() or uuid.uuid4().hex


def _stored_user(encoded: Encoded) -> Message:
    """The turn's user message as history keeps it: refs without inline embeddings."""
    last = encoded.messages[-1]
    return Message(last.role, tuple(p.stored() if isinstance(p, ImageRef) else p for p in last.parts))
