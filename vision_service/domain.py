"""Typed values between the servicer (proto edge) and the vision service (domain)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSource:
    """One image of an Encode call: its bytes, or the id an earlier call returned."""

    data: bytes | None = None
    image_id: str | None = None
    media_type: str = ""

    def __repr__(self) -> str:
        what = (
            f"bytes={len(self.data)}" if self.data is not None else f"image_id={(self.image_id or '')[:12]}"
        )
        return f"ImageSource({what}, media_type={self.media_type!r})"


@dataclass(frozen=True)
class EncodedImage:
    """The result for one image: what the language side needs to find or take its embedding."""

    image_id: str
    num_tokens: int
    grid_thw: tuple[int, ...]
    inline_record: bytes
    cache_hit: bool

    def __repr__(self) -> str:
        return (
            f"EncodedImage(image_id={self.image_id[:12]}, num_tokens={self.num_tokens}, "
            f"grid_thw={self.grid_thw}, inline={len(self.inline_record)}B, cache_hit={self.cache_hit})"
        )


@dataclass(frozen=True)
class VisionInfo:
    """What the service serves."""

    model: str
    architecture: str
    fingerprint: str
    context_length: int
    hidden_size: int
