"""The vision service: image bytes -> cached embeddings.

Per Encode call:

1. Resolve each source on the event loop: bytes are size- and magic-checked (``media.sniff``)
   and hashed (``image_id`` = sha256, computed here, never taken from the client); an
   ``image_id`` is resolved from the stored original bytes (unknown -> NOT_FOUND).
2. Join the single flight: image ids already in flight in this process are awaited; the new
   ones go to one leader task (``_lead``) for the whole call.
3. The leader reads the cache headers (a hit skips decoding entirely, and its tensor is read
   only for an inline answer), claims the cross-replica lease for each miss (or waits for the
   replica that holds it), admits its images against ``max_pending_images`` (over it:
   ``Overloaded``), decodes and preprocesses them in the thread pool, encodes them in one
   batched forward on the encoder thread, and stores embedding and image bytes. What Redis did
   not take is returned inline.

The steps' times are histograms (the B4 breakdown of TTFT): ``vision_hash_seconds`` per image
of step 1, ``vision_cache_seconds`` per leader (all its Redis round trips, lease ones included),
``vision_preprocess_seconds`` per image and ``vision_encode_seconds`` per encoder forward.

The caller's deadline (``timeout``) bounds the call (``DeadlineExceeded``). An image whose last
caller left (deadline, cancellation, failure) is neither encoded nor stored, and a leader none
of whose images is wanted any more is cancelled (see ``singleflight``).

Lifecycle: ``await VisionService.start(config)`` loads weights and warms up; ``close()`` stops
the encoder thread, the pool and the Redis client.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from tandem.embeddings import record
from tandem.embeddings.cache import CacheSettings, Embedding, EmbeddingCache
from tandem.embeddings.ids import image_id_of_async, is_image_id, scoped_image_id
from tandem.embeddings.kv import RedisStore, StoreUnavailable, connect_redis
from tandem.errors import DeadlineExceeded, InvalidInput, NotFound, Overloaded, Unavailable
from tandem.metrics import Metrics
from tandem.metrics.stopwatch import Stopwatch
from tandem.models.checkpoint import resolve
from tandem.models.fingerprint import fingerprint
from tandem.models.packed_linear import prepack_linears
from vision_service import media
from vision_service.adapters import ImageFeatures, Pixels, VisionAdapter, load_adapter
from vision_service.config import VisionConfig
from vision_service.domain import EncodedImage, ImageInput, ImageRef, VisionInfo
from vision_service.encoder import EncoderWorker
from vision_service.singleflight import HeldLeases, ReplicaLease, SingleFlight, Wanted

if TYPE_CHECKING:
    from vlm.v1.common_pb2 import EmbeddingHeader

log = logging.getLogger(__name__)

R = TypeVar("R")
OVERLOADED = "the vision encoder has too many images waiting; retry later"


@dataclass(frozen=True)
class _Image:
    image_id: str
    data: bytes
    fmt: str
    from_store: bool

    def __repr__(self) -> str:
        return f"_Image({self.image_id[:12]}, {self.fmt}, {len(self.data)}B)"


@dataclass(frozen=True)
class _Outcome:
    """One image's result; ``embedding`` is None for a cache hit whose header alone was read."""

    header: EmbeddingHeader
    embedding: Embedding | None
    stored: bool
    cache_hit: bool


class VisionService:
    """Encodes images with one adapter, a shared Redis cache (optional) and single flight."""

    def __init__(
        self,
        config: VisionConfig,
        adapter: VisionAdapter,
        model_fingerprint: str,
        cache: EmbeddingCache | None,
        metrics: Metrics,
    ):
        self.config = config
        self.adapter = adapter
        self.fingerprint = model_fingerprint
        self.cache = cache
        self.metrics = metrics
        self.limits = media.MediaLimits(
            config.max_image_bytes, config.max_image_pixels, config.max_aspect_ratio
        )
        self.encoder = EncoderWorker(adapter, config.max_batch, metrics)
        self.pool = ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="vision-preprocess")
        self.flights: SingleFlight[_Outcome] = SingleFlight()
        self.lease = ReplicaLease(cache, config.lease_seconds, config.lease_wait_seconds) if cache else None
        self.pending_images = 0  # admitted for encoding and not finished yet
        self.encoder.start()

    @classmethod
    async def start(cls, config: VisionConfig, metrics: Metrics | None = None) -> VisionService:
        """Load the vision half of ``config.model``, connect the cache and warm up."""
        metrics = metrics if metrics is not None else Metrics.for_service("vision")
        path = await asyncio.to_thread(resolve, config.model, config.revision)
        adapter = await asyncio.to_thread(load_adapter, path, config.device, config.dtype)
        packed = await asyncio.to_thread(prepack_linears, adapter.module, config.cpu_kernels)
        if packed:
            log.info("%d linear layers prepacked for oneDNN (--cpu-kernels onednn)", packed)
        model_fingerprint = await asyncio.to_thread(fingerprint, path, config.model, config.revision)
        cache = None
        if config.redis_url:
            store = RedisStore(connect_redis(config.redis_url, config.redis_timeout_seconds))
            metrics.watch("redis_breaker_open", lambda: float(store.breaker.is_open), role="cache")
            settings = CacheSettings(
                config.cache_prefix, config.embedding_ttl_seconds, config.image_ttl_seconds
            )
            cache = EmbeddingCache(
                store, model_fingerprint, adapter.hidden_size, settings, metrics, adapter.extras
            )
        service = cls(config, adapter, model_fingerprint, cache, metrics)
        await service.warmup()
        log.info("loaded %s (%s), fingerprint %s", config.model, adapter.architecture, model_fingerprint)
        return service

    def info(self) -> VisionInfo:
        return VisionInfo(
            model=self.config.model,
            architecture=self.adapter.architecture,
            fingerprint=self.fingerprint,
            context_length=self.adapter.context_length,
            hidden_size=self.adapter.hidden_size,
        )

    async def warmup(self) -> None:
        """Preprocess the adapter's dummy image and run a batched forward (not counted in metrics)."""
        pixels = await self._in_pool(self.adapter.preprocess, self.adapter.dummy_image())
        await asyncio.to_thread(self.adapter.encode, [pixels] * min(2, self.config.max_batch))

    async def close(self) -> None:
        await asyncio.to_thread(self.encoder.close)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.cache is not None:
            await self.cache.store.close()

    async def encode(
        self,
        sources: Sequence[ImageInput],
        force_inline: bool = False,
        timeout: float | None = None,
        scope: str = "",
    ) -> list[EncodedImage]:
        """Embeddings of ``sources`` in order (references, or inline when not stored).

        ``timeout``: seconds the caller still waits (None = no deadline); ``DeadlineExceeded``
        after that, with the work nobody else waits for dropped. A ``scope`` gives sent bytes
        the id ``scoped_image_id`` (so scopes never share an entry); an id sent in a scope must
        name bytes sent in that scope.
        """
        if not sources:
            raise InvalidInput("no images to encode; send at least one")
        if len(sources) > self.config.max_images_per_request:
            raise InvalidInput(
                f"{len(sources)} images; at most {self.config.max_images_per_request} per call"
            )
        try:
            async with asyncio.timeout(timeout):
                images = await asyncio.gather(*(self._resolve(s, scope) for s in sources))
                by_id = {image.image_id: image for image in images}
                outcomes = await self.flights.run(
                    list(by_id), lambda ids, wanted: self._lead([by_id[i] for i in ids], wanted)
                )
                outcome_of = dict(zip(by_id, outcomes, strict=True))
                return [await self._result(outcome_of[image.image_id], force_inline) for image in images]
        except InvalidInput:
            self.metrics.inc("vision_requests_rejected")
            raise
        except TimeoutError:
            self.metrics.inc("vision_requests_timed_out")
            raise DeadlineExceeded("the deadline passed before the images were encoded") from None

    async def _resolve(self, source: ImageInput, scope: str) -> _Image:
        if source.data is not None:
            began = time.perf_counter()
            fmt = media.sniff(source.data, source.media_type, self.limits)
            image_id = scoped_image_id(await image_id_of_async(source.data), scope)
            self.metrics.observe("vision_hash_seconds", time.perf_counter() - began)
            return _Image(image_id, source.data, fmt, from_store=False)
        if source.image_id is None:
            raise InvalidInput("each image needs its bytes (data) or an image_id from an earlier call")
        image_id = source.image_id
        if not is_image_id(image_id):
            raise InvalidInput("image_id must be 64 lowercase hex digits, as returned by an earlier call")
        try:
            cache = self.cache
            stored = await cache.get_image_bytes(image_id, strict=True, scope=scope) if cache else None
        except StoreUnavailable:
            raise Unavailable(
                "the image store is unreachable; send the image bytes instead or retry"
            ) from None
        if stored is None:
            raise NotFound(f"unknown image_id {image_id[:12]}...; send the image bytes again")
        return _Image(image_id, stored, media.sniff(stored, source.media_type, self.limits), from_store=True)

    async def _result(self, outcome: _Outcome, force_inline: bool) -> EncodedImage:
        header, inline = outcome.header, b""
        if force_inline or not outcome.stored:
            inline = (outcome.embedding or await self._read_whole(header.image_id)).to_record()
        ref = ImageRef(header.image_id, header.num_tokens, tuple(header.grid_thw), inline)
        return EncodedImage(ref, outcome.cache_hit)

    async def _read_whole(self, image_id: str) -> Embedding:
        """The whole embedding of a hit whose header alone was read (for an inline answer)."""
        embedding = await self.cache.get(image_id) if self.cache is not None else None
        if embedding is None:
            raise Unavailable("the cached embedding could not be read; retry")
        return embedding

    async def _lead(self, images: list[_Image], wanted: Wanted) -> dict[str, _Outcome | Exception]:
        """Results for images no one in this process is computing yet; the time spent in Redis
        (lookups, lease claims and releases, writes) is one ``vision_cache_seconds``."""
        held, redis = HeldLeases(self.lease), Stopwatch()
        if self.cache is None:
            return await self._compute(images, wanted, held, redis)
        try:
            return await self._lead_cached(self.cache, images, wanted, held, redis)
        finally:
            redis.observe(self.metrics, "vision_cache_seconds")

    async def _lead_cached(
        self, cache: EmbeddingCache, images: list[_Image], wanted: Wanted, held: HeldLeases, redis: Stopwatch
    ) -> dict[str, _Outcome | Exception]:
        with redis.timing():
            headers = await asyncio.gather(*(cache.get_header(image.image_id) for image in images))
        results: dict[str, _Outcome | Exception] = {
            h.image_id: _Outcome(h, None, True, True) for h in headers if h is not None
        }
        misses = [i for i, hit in zip(images, headers, strict=True) if hit is None and wanted(i.image_id)]
        try:
            with redis.timing():
                claims = await asyncio.gather(*(held.claim(i.image_id) for i in misses))
            mine = [image for image, claimed in zip(misses, claims, strict=True) if claimed]
            theirs = [image for image, claimed in zip(misses, claims, strict=True) if not claimed]
            parts = await asyncio.gather(
                self._compute(mine, wanted, held, redis),
                *(self._await_replica(i, wanted, held, redis) for i in theirs),
            )
        finally:
            with redis.timing():
                await held.release()
        for part in parts:
            results.update(part)
        return results

    async def _await_replica(
        self, image: _Image, wanted: Wanted, held: HeldLeases, redis: Stopwatch
    ) -> dict[str, _Outcome | Exception]:
        """Another replica holds the lease: take its result, or encode here if it never comes."""
        embedding = await held.wait(image.image_id)
        if embedding is not None:
            return {image.image_id: _Outcome(embedding.header, embedding, True, True)}
        return await self._compute([image], wanted, held, redis)

    async def _compute(
        self, images: list[_Image], wanted: Wanted, held: HeldLeases, redis: Stopwatch
    ) -> dict[str, _Outcome | Exception]:
        """Encode and store the wanted ``images``, then release their leases (``redis`` times
        the Redis work)."""
        try:
            return await self._admitted([i for i in images if wanted(i.image_id)], wanted, redis)
        finally:
            with redis.timing():
                await held.release([i.image_id for i in images])

    async def _admitted(
        self, images: list[_Image], wanted: Wanted, redis: Stopwatch
    ) -> dict[str, _Outcome | Exception]:
        """``_encode_and_store`` within ``max_pending_images``; over it every image is refused."""
        if not images:
            return {}
        if self.pending_images + len(images) > self.config.max_pending_images:
            self.metrics.inc("vision_images_refused", len(images))
            return {i.image_id: Overloaded(OVERLOADED) for i in images}
        self.pending_images += len(images)
        try:
            return await self._encode_and_store(images, wanted, redis)
        finally:
            self.pending_images -= len(images)

    async def _encode_and_store(
        self, images: list[_Image], wanted: Wanted, redis: Stopwatch
    ) -> dict[str, _Outcome | Exception]:
        """Decode, preprocess, encode in one forward, and store; per-image errors are returned."""
        prepared = await asyncio.gather(
            *(self._in_pool(self._prepare, i) for i in images), return_exceptions=True
        )
        results: dict[str, _Outcome | Exception] = {
            i.image_id: p for i, p in zip(images, prepared, strict=True) if isinstance(p, Exception)
        }
        good = [
            (i, p)
            for i, p in zip(images, prepared, strict=True)
            if isinstance(p, Pixels) and wanted(i.image_id)
        ]
        features = await self.encoder.encode([p for _, p in good])
        embeddings = [self._embedding(i, p, f) for (i, p), f in zip(good, features, strict=True)]
        with redis.timing():
            stored = await asyncio.gather(
                *(self._store(i, e, wanted) for (i, _), e in zip(good, embeddings, strict=True))
            )
        for (image, _), embedding, ok in zip(good, embeddings, stored, strict=True):
            results[image.image_id] = _Outcome(embedding.header, embedding, ok, False)
        return results

    def _prepare(self, image: _Image) -> Pixels:
        """Decode + normalise + preprocess one image (runs in the pool)."""
        began = time.perf_counter()
        rgb = media.decode(image.data, image.fmt, self.limits)
        try:
            pixels = self.adapter.preprocess(rgb)
        except ValueError as exc:
            raise InvalidInput(
                f"the {rgb.width}x{rgb.height} image cannot be preprocessed for this model"
            ) from exc
        self.metrics.observe("vision_preprocess_seconds", time.perf_counter() - began)
        return pixels

    def _embedding(self, image: _Image, pixels: Pixels, out: ImageFeatures) -> Embedding:
        grid = list(pixels.grid_thw) if pixels.grid_thw is not None else None
        header = record.header_of(
            fingerprint=self.fingerprint, image_id=image.image_id, tensor=out.features, grid_thw=grid,
            extras=out.extras,
        )  # fmt: skip
        return Embedding(header, out.features, out.extras)

    async def _store(self, image: _Image, embedding: Embedding, wanted: Wanted) -> bool:
        """Write embedding (and new image bytes) unless nobody waits for it any more."""
        if self.cache is None or not wanted(image.image_id):
            return False
        if image.from_store:
            return await self.cache.put(embedding)
        stored, _ = await asyncio.gather(
            self.cache.put(embedding), self.cache.put_image_bytes(image.image_id, image.data)
        )
        return stored

    async def _in_pool(self, fn: Callable[..., R], *args: object) -> R:
        context = contextvars.copy_context()  # the request's id on the pool's log lines
        return await asyncio.get_running_loop().run_in_executor(self.pool, context.run, fn, *args)
