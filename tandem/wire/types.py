"""Values the gateway, the two workers and the Python client share (no protos here).

Images go through three stages, one name each (the name of the ``vlm.v1`` message):
a client's ``ImageSource`` (bytes, URL or earlier id; the gateway's own type), an
``ImageInput`` ready for the vision service (bytes or a known id), and the ``ImageRef`` of an
encoded image that the language service takes. ``repr`` shows sizes and short hashes, never
image bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled"]

# OpenAI's role names; "developer" is its newer name for a system message.
_ROLE_NAMES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}


def role_from_name(name: object) -> Role | None:
    """The role an OpenAI-format message names, or None for an unknown name."""
    return _ROLE_NAMES.get(name) if isinstance(name, str) else None


@dataclass(frozen=True)
class Usage:
    """Token accounting of one generation (prompt tokens include image and cached tokens)."""

    prompt_tokens: int = 0
    image_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ModelInfo:
    """The served model: its name, architecture, modality, cache fingerprint and context length."""

    model: str
    architecture: str
    is_vlm: bool
    fingerprint: str
    context_length: int


@dataclass(frozen=True)
class ImageInput:
    """An image to encode: its bytes (with an optional media type), or the id an earlier call returned.

    The gateway sends only these (after its media guard); exactly one of ``data`` and
    ``image_id`` is set, and the vision service refuses one with neither.
    """

    data: bytes | None = None
    image_id: str | None = None
    media_type: str = ""

    def __repr__(self) -> str:
        if self.data is not None:
            return f"ImageInput(data=<{len(self.data)} bytes>, media_type={self.media_type!r})"
        return f"ImageInput(image_id={(self.image_id or '')[:12]}, media_type={self.media_type!r})"


@dataclass(frozen=True)
class ImageRef:
    """An encoded image: what the language service needs to find (or take) its embedding.

    ``inline_record`` holds the serialised embedding when the shared cache did not take it;
    session history keeps ``stored()`` refs, without it.
    """

    image_id: str
    num_tokens: int = 0
    grid_thw: tuple[int, ...] = ()
    inline_record: bytes = field(default=b"", repr=False)

    def stored(self) -> ImageRef:
        """The form kept in session history: no inline embedding bytes."""
        return ImageRef(self.image_id, self.num_tokens, self.grid_thw)

    def __repr__(self) -> str:
        return (
            f"ImageRef(image_id={self.image_id[:12]}, num_tokens={self.num_tokens}, "
            f"grid_thw={self.grid_thw}, inline_bytes={len(self.inline_record)})"
        )
