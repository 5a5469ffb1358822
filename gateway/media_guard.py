"""Turning a request's client image sources into inputs for the vision service, within limits.

Per request: at most ``max_images`` new images, each at most ``max_image_bytes``, together at
most ``max_request_bytes`` (sizes checked before any base64 decoding; URL bodies counted while
they stream in). ``image_id`` references pass through as ids: the vision service resolves them
from the bytes it kept and answers NOT_FOUND for unknown ones. Every refusal is
``InvalidInput`` with a message saying what to change. The time to get each image's bytes is one
``image_fetch_seconds`` observation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.budget import ByteBudget
from gateway.datauri import DataUri, decoded_size, is_data_uri, parse_data_uri
from gateway.deadline import Deadline
from gateway.fetch import UrlFetcher
from gateway.messages import ImageInput, ImageSource
from tandem.embeddings.ids import is_image_id
from tandem.errors import InvalidInput
from tandem.metrics import Metrics

_INLINE_DECODE_CHARS = 1 << 20  # larger data: URIs are decoded in a thread


@dataclass(frozen=True)
class MediaLimits:
    """Count and size limits of one request's images."""

    max_images: int = 8
    max_image_bytes: int = 16 * 1024 * 1024
    max_request_bytes: int = 40 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_images < 1 or self.max_image_bytes < 1:
            raise ValueError(f"{self.max_images=} and {self.max_image_bytes=} must be >= 1")
        if self.max_request_bytes < self.max_image_bytes:
            raise ValueError(f"{self.max_request_bytes=} must be >= {self.max_image_bytes=}")


class MediaGuard:
    """Resolves ``ImageSource`` values into ``ImageInput`` values under ``MediaLimits``
    (``metrics``: the gateway's; default: a registry of its own)."""

    def __init__(self, limits: MediaLimits, fetcher: UrlFetcher, metrics: Metrics | None = None):
        self.limits = limits
        self.fetcher = fetcher
        self.metrics = metrics if metrics is not None else Metrics()

    async def resolve(self, sources: Sequence[ImageSource], deadline: Deadline) -> list[ImageInput]:
        """Inputs in the same order; URL fetches run concurrently under one byte budget."""
        if len(sources) > self.limits.max_images:
            raise InvalidInput(
                f"too many images: {len(sources)}; at most {self.limits.max_images} per request"
            )
        budget = ByteBudget(self.limits.max_request_bytes)
        self._precheck_sizes(sources, budget)
        tasks = [asyncio.ensure_future(self._resolve_one(s, budget, deadline)) for s in sources]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    def _precheck_sizes(self, sources: Sequence[ImageSource], budget: ByteBudget) -> None:
        """Refuse by declared sizes alone, before decoding anything."""
        for source in sources:
            if source.data:
                size = len(source.data)
            elif is_data_uri(source.url):
                size = decoded_size(len(source.url.partition(",")[2]))
            else:
                continue
            if size > self.limits.max_image_bytes:
                raise InvalidInput(
                    f"an image is too large ({size} bytes; at most {self.limits.max_image_bytes} per image)"
                )
            budget.take(size)

    async def _resolve_one(self, source: ImageSource, budget: ByteBudget, deadline: Deadline) -> ImageInput:
        if source.image_id and not source.data:
            if not is_image_id(source.image_id):
                raise InvalidInput("an image_id must be the 64-hex-digit id a previous response returned")
            return ImageInput(image_id=source.image_id)
        began = time.perf_counter()
        image = await self._bytes_of(source, budget, deadline)
        self.metrics.observe("image_fetch_seconds", time.perf_counter() - began)
        return image

    async def _bytes_of(self, source: ImageSource, budget: ByteBudget, deadline: Deadline) -> ImageInput:
        """The bytes a source carries, decodes (data: URI) or names (http(s) URL)."""
        if source.data:
            return ImageInput(data=source.data, media_type=source.media_type)
        if is_data_uri(source.url):
            uri = await _parse_data_uri(source.url, self.limits.max_image_bytes)
            return ImageInput(data=uri.data, media_type=uri.media_type)
        if source.url:
            data = await self.fetcher.fetch(source.url, self.limits.max_image_bytes, budget, deadline)
            if not data:
                raise InvalidInput("the image URL returned an empty body")
            return ImageInput(data=data)
        raise InvalidInput("an image part has no source: set data, url or image_id")


async def _parse_data_uri(url: str, max_bytes: int) -> DataUri:
    """``parse_data_uri``; a large payload is base64-decoded off the event loop."""
    if len(url) <= _INLINE_DECODE_CHARS:
        return parse_data_uri(url, max_bytes)
    return await asyncio.to_thread(parse_data_uri, url, max_bytes)
