"""Image features for a prompt: the inline record if the caller sent one, else the shared cache.

Every record is validated against this model's fingerprint and hidden size, the image's id and
token count, and the family's extra tensors (``Adapter.extras``: exactly those names). A missing
(or invalid, hence deleted) cache entry is NOT_FOUND with a message the gateway acts on: it
re-encodes the image through the vision service and retries. An invalid inline record is
INVALID_ARGUMENT (the sender made it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from llm_service.conversation import ImageRef
from tandem.embeddings import record
from tandem.embeddings.cache import Embedding, EmbeddingCache, decode_inline
from tandem.errors import InvalidInput, NotFound
from tandem.metrics import Metrics


class FeatureSource:
    """Fetches and validates the embeddings of a request's images (concurrently); each request's
    fetch is one ``embedding_fetch_seconds`` (``metrics``: the worker's, default its own)."""

    def __init__(
        self,
        fingerprint: str,
        hidden_size: int,
        cache: EmbeddingCache | None,
        extras: tuple[str, ...] = (),
        metrics: Metrics | None = None,
    ):
        self.fingerprint = fingerprint
        self.hidden_size = hidden_size
        self.cache = cache
        self.extras = extras
        self.metrics = metrics if metrics is not None else Metrics()

    async def fetch(self, images: Sequence[ImageRef]) -> list[Embedding]:
        """One validated embedding per image, in order (none and not timed for no images)."""
        if not images:
            return []
        began = time.perf_counter()
        embeddings = list(await asyncio.gather(*(self._one(image) for image in images)))
        self.metrics.observe("embedding_fetch_seconds", time.perf_counter() - began)
        return embeddings

    async def _one(self, image: ImageRef) -> Embedding:
        expected = record.Expected(
            self.fingerprint, self.hidden_size, image.image_id, image.num_tokens, self.extras
        )
        if image.inline_record:
            try:
                return decode_inline(image.inline_record, expected)
            except record.BadRecord as exc:
                raise InvalidInput(
                    f"inline embedding for image {image.image_id[:12]} is invalid: {exc}"
                ) from None
        found = await self.cache.get(image.image_id, image.num_tokens) if self.cache is not None else None
        if found is None:
            name = image.image_id[:12]
            raise NotFound(
                f"embedding for image {name} is not cached; re-encode it through the vision service"
            )
        return found
