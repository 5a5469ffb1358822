"""Image identity: the sha256 hex digest of an image's exact bytes (no torch import here).

In a key scope (the gateway's ``--cache-scope tenant``) the id of the same bytes is another
sha256, of the scope and that digest (``scoped_image_id``): each tenant's images get their own
ids, cache entries and stored bytes, so no tenant can time another's cache hits.
"""

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


def scoped_image_id(image_id: str, scope: str) -> str:
    """The id of the image ``image_id`` within ``scope`` (itself when the scope is empty)."""
    if not scope:
        return image_id
    return hashlib.sha256(f"tandem-image-scope\0{scope}\0{image_id}".encode()).hexdigest()


def is_image_id(value: str) -> bool:
    """True for a well-formed image id (64 lowercase hex digits)."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)
