"""Typed values that flow between the gateway's stages (no protos below the servicer).

A conversation is a sequence of ``Message``; each part is text, an image as the client named
it (``ImageSource``, before the media guard), or an image as the vision service encoded it
(``ImageRef``, after encoding; stored in session history without its inline record). Between
the two, the media guard turns each ``ImageSource`` into an ``ImageInput`` for the vision
service. The values the gateway shares with the workers and the client (``Role``,
``FinishReason``, ``Usage``, ``ModelInfo``, ``ImageInput``, ``ImageRef``) are defined in
``tandem.wire.types`` and re-exported here, so a stage imports its whole vocabulary from this
module. ``repr`` never shows prompt text or image bytes, only sizes and short hashes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.wire.types import FinishReason as FinishReason
from tandem.wire.types import ImageInput as ImageInput
from tandem.wire.types import ImageRef as ImageRef
from tandem.wire.types import ModelInfo as ModelInfo
from tandem.wire.types import Role as Role
from tandem.wire.types import Usage as Usage


@dataclass(frozen=True)
class ImageSource:
    """An image as a client sent it: exactly one of ``data``, ``url``, ``image_id`` is set."""

    data: bytes = b""
    url: str = ""
    image_id: str = ""
    media_type: str = ""

    def __repr__(self) -> str:
        if self.data:
            return f"ImageSource(data=<{len(self.data)} bytes>)"
        if self.url:
            return f"ImageSource(url=<{len(self.url)} chars>)"
        return f"ImageSource(image_id={self.image_id[:12]})"


Part = str | ImageSource | ImageRef


@dataclass(frozen=True)
class Message:
    """One message of a conversation."""

    role: Role
    parts: tuple[Part, ...]

    def images(self) -> list[ImageSource | ImageRef]:
        return [p for p in self.parts if not isinstance(p, str)]

    def __repr__(self) -> str:
        kinds = "".join("t" if isinstance(p, str) else "i" for p in self.parts)
        return f"Message(role={self.role}, parts={kinds})"


@dataclass(frozen=True)
class Sampling:
    """Sampling settings, passed to the language service (0 means its default)."""

    max_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0
    repetition_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class Chunk:
    """One piece of a generation stream; the last one carries ``finish_reason`` and ``usage``."""

    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    image_ids: tuple[str, ...] = ()
    replayed: bool = False

    @property
    def is_final(self) -> bool:
        return self.finish_reason is not None

    def __repr__(self) -> str:
        return f"Chunk(chars={len(self.text)}, tokens={len(self.token_ids)}, finish={self.finish_reason})"
