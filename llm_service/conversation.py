"""Typed conversation values between the servicer edge and the worker (no protos below the edge)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from llm_service.engine.types import SamplingConfig

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ImageInput:
    """An image already encoded by the vision service: its id, size in tokens, and maybe the record."""

    image_id: str
    num_tokens: int
    grid_thw: tuple[int, ...] = ()
    inline_record: bytes = field(default=b"", repr=False)

    def __repr__(self) -> str:
        inline = len(self.inline_record)
        return (
            f"ImageInput(image_id={self.image_id[:12]}, num_tokens={self.num_tokens}, inline_bytes={inline})"
        )


@dataclass(frozen=True)
class TextPart:
    """Plain text of a message."""

    text: str

    def __repr__(self) -> str:
        return f"TextPart(len={len(self.text)})"


Part = TextPart | ImageInput


@dataclass(frozen=True)
class ChatMessage:
    """One message: a role and its parts in order."""

    role: Role
    parts: tuple[Part, ...]

    @property
    def images(self) -> list[ImageInput]:
        return [p for p in self.parts if isinstance(p, ImageInput)]


@dataclass(frozen=True)
class GenerationRequest:
    """One GenerateTokens call after edge conversion.

    ``clamp_to_context`` is set when the caller left max_new_tokens to the server: the default is
    then shortened to what the context window leaves, instead of refusing the request.
    """

    request_id: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingConfig
    session_id: str | None = None
    clamp_to_context: bool = False


def all_images(messages: Sequence[ChatMessage]) -> list[ImageInput]:
    """Images of a conversation in prompt order."""
    return [image for message in messages for image in message.images]
