"""``Gateway``: the domain behind the public API (one-off generation, session turns, info).

A session turn streams its answer while holding the session's turn lock, and commits the
turn (user message with image refs, assistant answer, ``CommittedTurn`` for retries) before
it yields the final chunk: a client that has seen ``finish_reason`` knows the turn is saved.
A turn that fails, is cancelled, or ends with ``FINISH_REASON_CANCELLED`` is not committed.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, Sequence

from gateway.deadline import Deadline
from gateway.messages import Chunk, ImageRef, Message, ModelInfo, Part, Sampling, Usage
from gateway.pipeline import Encoded, Pipeline
from gateway.sessions import CommittedTurn, Sessions, SessionState, Turn
from tandem.errors import InvalidInput, Unavailable


class Gateway:
    """Generation and sessions over a ``Pipeline`` and a ``Sessions`` store."""

    def __init__(self, pipeline: Pipeline, sessions: Sessions, max_request_seconds: float = 0.0):
        self.pipeline = pipeline
        self.sessions = sessions
        self.max_request_seconds = max_request_seconds

    def model_info(self) -> ModelInfo:
        return self.pipeline.require_model()

    async def generate(
        self, messages: Sequence[Message], sampling: Sampling, request_id: str, deadline: Deadline
    ) -> AsyncGenerator[Chunk, None]:
        """Answer a conversation without a session."""
        deadline = deadline.capped(self.max_request_seconds)
        encoded = await self.pipeline.prepare(messages, deadline)
        stream = self.pipeline.stream(encoded, sampling, request_id or uuid.uuid4().hex, "", deadline)
        async with contextlib.aclosing(stream) as chunks:
            async for chunk in chunks:
                yield chunk

    async def chat(
        self, session_id: str, parts: Sequence[Part], sampling: Sampling, request_id: str, deadline: Deadline
    ) -> AsyncGenerator[Chunk, None]:
        """One user turn of a session; a known ``request_id`` replays the committed answer."""
        if not parts:
            raise InvalidInput("the turn is empty; send at least one text or image part")
        deadline = deadline.capped(self.max_request_seconds)
        if request_id:  # a retry of a committed turn is answered without waiting for the lock
            done = (await self.sessions.get(session_id)).find_turn(request_id)
            if done is not None:
                yield done.replay()
                return
        async with self.sessions.turn(session_id) as turn:
            done = turn.state.find_turn(request_id)
            if done is not None:
                yield done.replay()
                return
            user = Message("user", tuple(parts))
            encoded = await self.pipeline.prepare([*turn.state.messages, user], deadline)
            async for chunk in self._run_turn(turn, encoded, sampling, request_id, deadline):
                yield chunk

    async def _run_turn(
        self, turn: Turn, encoded: Encoded, sampling: Sampling, request_id: str, deadline: Deadline
    ) -> AsyncGenerator[Chunk, None]:
        session_id = turn.state.session_id
        stream = self.pipeline.stream(encoded, sampling, request_id or uuid.uuid4().hex, session_id, deadline)
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
                    )
                    await turn.commit(_stored_user(encoded), answer)
                yield chunk
                if chunk.is_final:
                    return
        raise Unavailable("the answer ended before it was complete; the turn was not saved, retry it")

    async def create_session(self, system_prompt: str, ttl_seconds: int) -> SessionState:
        return await self.sessions.create(system_prompt, ttl_seconds)

    async def get_session(self, session_id: str) -> SessionState:
        return await self.sessions.get(session_id)

    async def list_sessions(self, page_size: int, page_token: str) -> tuple[list[SessionState], str]:
        return await self.sessions.list_page(page_size, page_token)

    async def delete_session(self, session_id: str) -> None:
        await self.sessions.delete(session_id)


def _stored_user(encoded: Encoded) -> Message:
    """The turn's user message as history keeps it: refs without inline embeddings."""
    last = encoded.messages[-1]
    return Message(last.role, tuple(p.stored() if isinstance(p, ImageRef) else p for p in last.parts))
