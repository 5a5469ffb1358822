"""Handles on server-side chat sessions, for the sync and the async pipeline.

The history lives in the gateway's store, not in these objects: a session can be continued from
another process (or another replica) by its ``session_id``. ``response`` is the answer of the
last turn made through this handle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from tandem.client.response import HistoryMessage, Response

if TYPE_CHECKING:
    from tandem.client.async_pipeline import AsyncPipeline
    from tandem.client.config import GenerationConfig
    from tandem.client.pipeline import Pipeline


class _HasSessionId(Protocol):
    session_id: str


def session_id_of(session: _HasSessionId | str) -> str:
    """The id of a session handle, or the id itself."""
    sid = session if isinstance(session, str) else session.session_id
    if not sid:
        raise ValueError("a session id must be a non-empty string")
    return sid


class Session:
    """A chat session of a sync ``Pipeline``: ``pipe.chat(prompt, session=sess)`` continues it."""

    def __init__(self, pipe: Pipeline, session_id: str, response: Response | None = None):
        self._pipe = pipe
        self.session_id = session_id
        self.response = response

    def __repr__(self) -> str:
        return f"Session(session_id={self.session_id!r})"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def history(self) -> list[HistoryMessage]:
        """The committed messages, read from the gateway."""
        return list(self._pipe.get_session(self.session_id).messages)

    def chat(self, prompt: object, gen_config: GenerationConfig | None = None) -> Session:
        """Add one user turn; same as ``pipe.chat(prompt, session=self)``."""
        return self._pipe.chat(prompt, session=self, gen_config=gen_config)

    def close(self) -> None:
        """Delete the session on the server."""
        self._pipe.end_session(self.session_id)


class AsyncSession:
    """A chat session of an ``AsyncPipeline``: ``await apipe.chat(prompt, session=sess)``."""

    def __init__(self, pipe: AsyncPipeline, session_id: str, response: Response | None = None):
        self._pipe = pipe
        self.session_id = session_id
        self.response = response

    def __repr__(self) -> str:
        return f"AsyncSession(session_id={self.session_id!r})"

    async def get_history(self) -> list[HistoryMessage]:
        """The committed messages, read from the gateway."""
        return list((await self._pipe.get_session(self.session_id)).messages)

    async def chat(self, prompt: object, gen_config: GenerationConfig | None = None) -> AsyncSession:
        """Add one user turn; same as ``await apipe.chat(prompt, session=self)``."""
        return await self._pipe.chat(prompt, session=self, gen_config=gen_config)

    async def close(self) -> None:
        """Delete the session on the server."""
        await self._pipe.end_session(self.session_id)
