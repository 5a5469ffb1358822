"""Typed conversation values between the servicer edge and the worker (no protos below the edge).

A message's parts are ``TextPart`` and ``ImageRef`` (an image the vision service encoded). The
values shared with the gateway (``Role``, ``ImageRef``) are defined in ``tandem.wire.types`` and
re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llm_service.engine.types import SamplingConfig
from tandem.wire.types import ImageRef as ImageRef
from tandem.wire.types import Role as Role


@dataclass(frozen=True)
class TextPart:
    """Plain text of a message."""

    text: str

    def __repr__(self) -> str:
        return f"TextPart(len={len(self.text)})"


Part = TextPart | ImageRef


@dataclass(frozen=True)
class ChatMessage:
    """One message: a role and its parts in order."""

    role: Role
    parts: tuple[Part, ...]

    @property
    def images(self) -> list[ImageRef]:
        return [p for p in self.parts if isinstance(p, ImageRef)]


@dataclass(frozen=True)
class GenerationRequest:
    """One GenerateTokens call after edge conversion.

    ``clamp_to_context`` is set when the caller left max_new_tokens to the server: the default is
    then shortened to what the context window leaves, instead of refusing the request. ``tenant``
    is who the gateway asks for: a session's KV is keyed by (tenant, session), never shared.
    """

    request_id: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingConfig
    session_id: str | None = None
    clamp_to_context: bool = False
    tenant: str = ""


def all_images(messages: Sequence[ChatMessage]) -> list[ImageRef]:
    """Images of a conversation in prompt order."""
    return [image for message in messages for image in message.images]
