"""What the client returns: answers, token usage, stored history and model info.

``Usage`` and ``ModelInfo`` are the wire values of ``tandem.wire.types``, re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from vlm.v1 import gateway_pb2

from tandem.client.images import ImageId
from tandem.wire.convert import finish_from_pb, role_from_pb, usage_from_pb
from tandem.wire.types import FinishReason
from tandem.wire.types import ModelInfo as ModelInfo
from tandem.wire.types import Usage as Usage


@dataclass
class Response:
    """An answer, or one streamed chunk of it (``text`` then holds only the new text).

    ``finish_reason`` and ``usage`` are set on a complete answer and on the last chunk;
    ``image_ids`` (usable later as ``ImageId``) on a complete answer and the first chunk.
    ``index`` is the prompt's position in a batch.
    """

    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    image_ids: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    session_id: str | None = None
    index: int = 0
    replayed: bool = False

    def __repr__(self) -> str:
        return (
            f"Response(text={self.text!r}, finish_reason={self.finish_reason!r}, usage={self.usage!r}, "
            f"image_ids={self.image_ids!r}, tokens={len(self.token_ids)}, index={self.index})"
        )

    @property
    def generate_token_len(self) -> int:
        """Generated tokens (LMDeploy's name)."""
        return self.usage.completion_tokens if self.usage else len(self.token_ids)

    @property
    def input_token_len(self) -> int:
        """Prompt tokens (LMDeploy's name)."""
        return self.usage.prompt_tokens if self.usage else 0

    @classmethod
    def from_pb(
        cls,
        message: gateway_pb2.GenerateResponse | gateway_pb2.ChatResponse,
        index: int = 0,
        session_id: str | None = None,
    ) -> Response:
        """One stream message -> a chunk."""
        return cls(
            text=message.text,
            finish_reason=finish_from_pb(message.finish_reason),
            usage=usage_from_pb(message.usage) if message.HasField("usage") else None,
            image_ids=list(message.image_ids),
            token_ids=list(message.token_ids),
            session_id=session_id,
            index=index,
            replayed=getattr(message, "replayed", False),
        )

    def extend(self, chunk: Response) -> None:
        """Append a chunk to this (accumulating) answer."""
        self.text += chunk.text
        self.token_ids.extend(chunk.token_ids)
        self.image_ids.extend(chunk.image_ids)
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.usage = chunk.usage or self.usage
        self.replayed = self.replayed or chunk.replayed


@dataclass(frozen=True)
class HistoryMessage:
    """One committed message of a server-side session; images appear as ``ImageId``."""

    role: str
    parts: tuple[str | ImageId, ...]

    @property
    def text(self) -> str:
        """The message's text parts, joined."""
        return "".join(part for part in self.parts if isinstance(part, str))

    @property
    def image_ids(self) -> list[str]:
        return [part.value for part in self.parts if isinstance(part, ImageId)]

    @classmethod
    def from_pb(cls, message: gateway_pb2.HistoryMessage) -> HistoryMessage:
        parts: list[str | ImageId] = [
            ImageId(part.image_id) if part.WhichOneof("kind") == "image_id" else part.text
            for part in message.parts
        ]
        return cls(role_from_pb(message.role) or "unspecified", tuple(parts))


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class SessionInfo:
    """A server-side session as ``GetSession``/``ListSessions`` describe it."""

    session_id: str
    messages: tuple[HistoryMessage, ...]
    created_at: datetime
    updated_at: datetime
    ttl_seconds: int

    @classmethod
    def from_pb(cls, session: gateway_pb2.Session) -> SessionInfo:
        return cls(
            session.session_id,
            tuple(HistoryMessage.from_pb(m) for m in session.messages),
            _time(session.created_at_ms),
            _time(session.updated_at_ms),
            session.ttl_seconds,
        )
