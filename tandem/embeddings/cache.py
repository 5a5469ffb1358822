"""The content-addressed embedding cache shared by every vision and language replica.

Keys (``prefix`` defaults to ``tandem``):

- ``{prefix}:emb:{fingerprint}:{image_id}`` -> embedding record (``record.py``); a record
  larger than ``chunk_bytes`` keeps its first part there and the rest under ``...:{i}`` for
  i = 1..num_chunks (Redis slows sharply on values over ~8 MB).
- ``{prefix}:img:{image_id}`` -> the original image bytes, for ``image_ttl_seconds`` (15 min by
  default): an image id of a request without a session can be sent again meanwhile, and an
  evicted embedding is recomputed from them. This is the cache role (bounded, LRU): a session's
  images are also kept in the state role by the gateway (``gateway.session_images``), which
  sends their bytes again when these are gone.
- ``{prefix}:lease:{fingerprint}:{image_id}`` -> the replica currently encoding that image.

``image_id`` is the sha256 of the bytes received, computed by the service. ``get`` reads and
validates a whole value; ``get_header`` reads only its first bytes and lengths (to report a hit
without moving the tensor). A value that fails validation is deleted, counted
(``vision_cache_bad_values``) and reported as a miss. An unreachable store is also a miss
(``redis_errors{role="cache"}``): callers compute instead of failing. Lookups count
``vision_cache_hits``/``vision_cache_misses``; reads and writes are spans of the current request
when it is traced.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from vlm.v1 import common_pb2

from tandem.embeddings import record
from tandem.embeddings.ids import image_id_of as image_id_of  # re-exported for callers of this module
from tandem.embeddings.ids import image_id_of_async, scoped_image_id
from tandem.embeddings.ids import is_image_id as is_image_id
from tandem.embeddings.kv import KeyValueStore, StoreUnavailable
from tandem.metrics import Metrics
from tandem.serving import request_context

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_CHUNKS = 1024
_REDIS = {"db.system": "redis"}


@dataclass(frozen=True)
class CacheSettings:
    """Key prefix, TTLs and chunking of the shared cache."""

    prefix: str = "tandem"
    embedding_ttl_seconds: int = 3600
    image_ttl_seconds: int = 900
    chunk_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.embedding_ttl_seconds < 1 or self.image_ttl_seconds < 1:
            raise ValueError(f"{self.embedding_ttl_seconds=} and {self.image_ttl_seconds=} must be >= 1")
        if self.chunk_bytes < 64 * 1024:
            raise ValueError(f"{self.chunk_bytes=} must be >= 64 KiB")


@dataclass(frozen=True)
class Embedding:
    """A validated embedding: header, the features and the named extra tensors (in header order;
    Qwen3-VL's deepstack features), all viewing the stored bytes."""

    header: common_pb2.EmbeddingHeader
    features: torch.Tensor
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_record(cls, header: common_pb2.EmbeddingHeader, data: bytes | memoryview) -> Embedding:
        """The embedding of a validated record (``record.validate`` first)."""
        return cls(header, record.to_tensor(header, data), record.extra_tensors(header, data))

    @property
    def grid_thw(self) -> list[int]:
        return list(self.header.grid_thw)

    @property
    def metadata(self) -> dict[str, tuple[int, ...]]:
        return record.metadata_of(self.header)

    def payload(self) -> bytes | memoryview:
        """The record's ``data`` bytes (features, then extras)."""
        return record.payload(self.features, self.extras)

    def to_record(self) -> bytes:
        """The single-value record (for inline hand-over)."""
        header = common_pb2.EmbeddingHeader()
        header.CopyFrom(self.header)
        header.num_chunks = 0
        return record.encode(header, self.payload())

    def __repr__(self) -> str:
        return f"Embedding(image_id={self.header.image_id[:12]}, shape={tuple(self.features.shape)})"


def decode_inline(value: bytes, expected: record.Expected) -> Embedding:
    """Validate an inline record; raises ``record.BadRecord``."""
    header, data = record.split(value)
    if header.num_chunks:
        raise record.BadRecord("inline records are never chunked")
    record.validate(header, len(data), expected)
    return Embedding.from_record(header, data)


class EmbeddingCache:
    """Read, write and validate embeddings and image bytes for one model fingerprint."""

    def __init__(
        self,
        store: KeyValueStore,
        fingerprint: str,
        hidden_size: int,
        settings: CacheSettings | None = None,
        metrics: Metrics | None = None,
        extras: tuple[str, ...] | None = None,
    ):
        self.store = store
        self.fingerprint = fingerprint
        self.hidden_size = hidden_size
        self.extras = extras  # the extra tensors every record must hold, by name (None: any)
        self.settings = settings or CacheSettings()
        self.metrics = metrics or Metrics()

    def key(self, image_id: str) -> str:
        return f"{self.settings.prefix}:emb:{self.fingerprint}:{image_id}"

    def image_key(self, image_id: str) -> str:
        return f"{self.settings.prefix}:img:{image_id}"

    def lease_key(self, image_id: str) -> str:
        return f"{self.settings.prefix}:lease:{self.fingerprint}:{image_id}"

    def expected(self, image_id: str, num_tokens: int | None = None) -> record.Expected:
        return record.Expected(self.fingerprint, self.hidden_size, image_id, num_tokens, self.extras)

    async def get(self, image_id: str, num_tokens: int | None = None) -> Embedding | None:
        """The cached embedding, or None on a miss, a bad value or an unreachable store."""
        key = self.key(image_id)
        with request_context.span("cache get", attributes=_REDIS):
            return await self._lookup(image_id, key, self._read(key, self.expected(image_id, num_tokens)))

    async def get_header(self, image_id: str) -> common_pb2.EmbeddingHeader | None:
        """The cached embedding's header without reading its tensor; None as for ``get``.

        Checked as far as the header and the stored lengths allow (layout, fingerprint, image id,
        dtype, shape, hidden size, data length with every chunk); a bad value is deleted and
        counted as in ``get``. Whoever uses the tensor reads and validates it whole (``get``).
        """
        key = self.key(image_id)
        with request_context.span("cache get_header", attributes=_REDIS):
            return await self._lookup(image_id, key, self._read_header(key, self.expected(image_id)))

    async def _lookup(self, image_id: str, key: str, read: Awaitable[T | None]) -> T | None:
        """``read``'s result, counted; a bad value is deleted; an unreachable store is a miss."""
        try:
            found = await read
        except StoreUnavailable:
            self.metrics.inc("redis_errors", role="cache")
            return None
        except record.BadRecord as exc:
            log.warning("bad cache value for %s: %s; deleting", image_id[:12], exc)
            self.metrics.inc("vision_cache_bad_values")
            await self._forget(key)
            return None
        self.metrics.inc("vision_cache_misses" if found is None else "vision_cache_hits")
        return found

    async def _read(self, key: str, expected: record.Expected) -> Embedding | None:
        (value,) = await self.store.get_many([key])
        if value is None:
            return None
        header, first = record.split(value)
        data: bytes | memoryview = first
        if _chunks(header):
            rest = await self.store.get_many(_chunk_keys(key, header.num_chunks))
            if any(part is None for part in rest):
                raise record.BadRecord("missing chunk")
            data = b"".join([first, *(part for part in rest if part is not None)])
        record.validate(header, len(data), expected)
        return Embedding.from_record(header, data)

    async def _read_header(self, key: str, expected: record.Expected) -> common_pb2.EmbeddingHeader | None:
        ((head, length),) = await self.store.peek([key], record.HEADER_BYTES)
        if head is None:
            return None
        header, data_length = record.read_header(head, length)
        if _chunks(header):
            parts = await self.store.peek(_chunk_keys(key, header.num_chunks), 1)
            if any(part is None for part, _ in parts):
                raise record.BadRecord("missing chunk")
            data_length += sum(size for _, size in parts)
        record.validate(header, data_length, expected)
        return header

    async def _forget(self, key: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.store.delete(key)

    async def put(self, embedding: Embedding) -> bool:
        """Store an embedding (chunked when large); False when the store is unreachable."""
        header = common_pb2.EmbeddingHeader()
        header.CopyFrom(embedding.header)
        raw = memoryview(embedding.payload())
        size = self.settings.chunk_bytes
        parts = [raw[i : i + size] for i in range(0, max(len(raw), 1), size)]
        header.num_chunks = len(parts) - 1
        key = self.key(header.image_id)
        items: list[tuple[str, bytes | memoryview]] = [(f"{key}:{i}", p) for i, p in enumerate(parts) if i]
        items.append((key, record.encode(header, parts[0])))  # head last: readers never see a partial record
        try:
            with request_context.span("cache put", attributes=_REDIS):
                await self.store.put_many(items, self.settings.embedding_ttl_seconds)
        except StoreUnavailable:
            self.metrics.inc("redis_errors", role="cache")
            return False
        return True

    async def get_image_bytes(self, image_id: str, *, strict: bool = False, scope: str = "") -> bytes | None:
        """Original bytes of an image sent earlier, or None (unknown, expired or store down).

        ``strict``: an unreachable store raises ``StoreUnavailable`` instead of returning None,
        so callers can tell "unknown image" from "cannot look it up now". The bytes must hash to
        ``image_id`` in the key ``scope`` it was made in (``scoped_image_id``).
        """
        try:
            with request_context.span("cache get_image", attributes=_REDIS):
                (value,) = await self.store.get_many([self.image_key(image_id)])
        except StoreUnavailable:
            self.metrics.inc("redis_errors", role="cache")
            if strict:
                raise
            return None
        if value is not None and scoped_image_id(await image_id_of_async(value), scope) != image_id:
            if scope:  # maybe another scope's image: unknown here, and not ours to delete
                return None
            self.metrics.inc("vision_cache_bad_values")
            await self._forget(self.image_key(image_id))
            return None
        return value

    async def put_image_bytes(self, image_id: str, data: bytes) -> bool:
        try:
            with request_context.span("cache put_image", attributes=_REDIS):
                await self.store.put_many([(self.image_key(image_id), data)], self.settings.image_ttl_seconds)
        except StoreUnavailable:
            self.metrics.inc("redis_errors", role="cache")
            return False
        return True

    async def try_lease(self, image_id: str, owner: str, seconds: float) -> bool:
        """Claim the right to encode ``image_id``; True also when the store is down (encode locally)."""
        try:
            return await self.store.put_if_absent(self.lease_key(image_id), owner.encode(), seconds)
        except StoreUnavailable:
            return True

    async def release_lease(self, image_id: str, owner: str) -> None:
        """Drop our lease; a lease that expired and was taken by another replica stays theirs."""
        with contextlib.suppress(StoreUnavailable):
            await self.store.delete_if_equal(self.lease_key(image_id), owner.encode())


def _chunks(header: common_pb2.EmbeddingHeader) -> int:
    if header.num_chunks > MAX_CHUNKS:
        raise record.BadRecord("too many chunks")
    return header.num_chunks


def _chunk_keys(key: str, num_chunks: int) -> list[str]:
    return [f"{key}:{i}" for i in range(1, num_chunks + 1)]


def chunk_count(num_bytes: int, chunk_bytes: int) -> int:
    """Extra chunks a value of ``num_bytes`` needs (for tests and benchmarks)."""
    return max(0, math.ceil(num_bytes / chunk_bytes) - 1)
