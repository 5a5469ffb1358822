"""Image identity: the sha256 hex digest of an image's exact bytes (no torch import here)."""

from __future__ import annotations

import asyncio
import hashlib

HASH_INLINE_BYTES = 1 << 20  # larger payloads are hashed off the event loop


def image_id_of(data: bytes) -> str:
    """The identity of an image: sha256 hex digest of its exact bytes."""
    return hashlib.sha256(data).hexdigest()


async def image_id_of_async(data: bytes) -> str:
    """``image_id_of`` for event-loop callers: payloads over ``HASH_INLINE_BYTES`` hash in a thread."""
    if len(data) <= HASH_INLINE_BYTES:
        return image_id_of(data)
    return await asyncio.to_thread(image_id_of, data)


def is_image_id(value: str) -> bool:
    """True for a well-formed image id (64 lowercase hex digits)."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
