"""Typed values between the servicer (proto edge) and the vision service (domain).

The service takes ``ImageInput`` values and returns an ``ImageRef`` per image; both are the
shared wire values of ``tandem.wire.types``, re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.wire.types import ImageInput as ImageInput
from tandem.wire.types import ImageRef as ImageRef


@dataclass(frozen=True)
class EncodedImage:
    """The result for one image: the ``ref`` the language side needs, and whether it was cached."""

    ref: ImageRef
    cache_hit: bool


@dataclass(frozen=True)
class VisionInfo:
    """What the service serves."""

    model: str
    architecture: str
    fingerprint: str
    context_length: int
    hidden_size: int
