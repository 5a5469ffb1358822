"""The vision service's cache behaviour against real Redis: hostile values, single flight, outages."""

from __future__ import annotations

import asyncio
import io
import pickle
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
import torch
from vlm.v1 import common_pb2, vision_pb2, vision_pb2_grpc

from tandem.embeddings import record
from tandem.embeddings.cache import CacheSettings, Embedding, EmbeddingCache, decode_inline, image_id_of
from tandem.embeddings.kv import KeyValueStore, MemoryStore, RedisStore, connect_redis
from tandem.redis_local import LocalRedis
from tandem.serving.bootstrap import channel_options
from tandem.testing.checkpoints import make_test_image
from vision_service.config import VisionConfig
from vision_service.inprocess import RunningVision, running_vision


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    make_test_image(seed).save(buf, "PNG")
    return buf.getvalue()


def vision_config(model: Path, redis_url: str, **overrides: Any) -> VisionConfig:
    values: dict[str, Any] = {"model": str(model), "redis_url": redis_url, "port": 0, "reflection": False}
    values["cache_prefix"] = f"t{uuid.uuid4().hex[:8]}"
    return VisionConfig(**(values | overrides))


async def encode(vision: RunningVision, data: bytes, force_inline: bool = False) -> Any:
    async with grpc.aio.insecure_channel(vision.address, options=channel_options(64 << 20)) as channel:
        stub = vision_pb2_grpc.VisionServiceStub(channel)
        images = [vision_pb2.ImageInput(data=data)]
        response = await stub.Encode(vision_pb2.EncodeRequest(images=images, force_inline=force_inline))
        return response.images[0]


def encoded(vision: RunningVision) -> float:
    return vision.service.metrics.get("vision_images_encoded")


def corrupt_values(good: bytes) -> dict[str, bytes]:
    """Hostile values for the key of ``good`` (a valid record)."""
    header, data = record.split(good)

    def with_header(**changes: Any) -> bytes:
        bad = common_pb2.EmbeddingHeader()
        bad.CopyFrom(header)
        for name, value in changes.items():
            if name == "shape":
                del bad.shape[:]
                bad.shape.extend(value)
            else:
                setattr(bad, name, value)
        return record.encode(bad, data)

    hidden = header.hidden_size
    half = torch.zeros(header.num_tokens, hidden // 2)
    wrong_hidden, raw = record.make_header(
        fingerprint=header.fingerprint, image_id=header.image_id, tensor=half
    )
    return {
        "wrong length": record.encode(header, bytes(data)[:-4]),
        "unknown dtype": with_header(dtype=99),
        "huge dims": with_header(shape=[1 << 40, hidden], num_tokens=1 << 31),
        "negative dims": with_header(shape=[-5, hidden]),
        "wrong hidden size": record.encode(wrong_hidden, raw),
        "truncated": good[: len(good) // 2],
        "pickle blob": pickle.dumps({"features": [1.0, 2.0]}),
        "empty": b"",
    }


async def test_corrupt_values_are_misses_deleted_recomputed_and_counted(checkpoint, redis_server) -> None:
    async with running_vision(vision_config(checkpoint("llava"), redis_server.url)) as vision:
        cache = vision.service.cache
        data = png(21)
        good = (await encode(vision, data, force_inline=True)).ref.inline_record
        key = cache.key(image_id_of(data))
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            for n, (name, bad) in enumerate(corrupt_values(good).items(), start=1):
                await client.set(key, bad)
                result = await encode(vision, data, force_inline=True)
                assert not result.cache_hit, name
                assert result.ref.inline_record == good, name
                assert vision.service.metrics.get("vision_cache_bad_values") == n, name
                assert encoded(vision) == n + 1, name
                assert await client.get(key) == good, name  # replaced by the recomputed value
        finally:
            await client.aclose()


async def test_one_encode_for_twenty_concurrent_requests(checkpoint, redis_server) -> None:
    async with running_vision(vision_config(checkpoint("qwen2_vl"), redis_server.url)) as vision:
        data = png(22)
        results = await asyncio.gather(*(encode(vision, data, force_inline=True) for _ in range(20)))
        assert encoded(vision) == 1
        assert len({r.ref.inline_record for r in results}) == 1


async def test_two_replicas_sharing_redis_encode_once_per_image_at_most(checkpoint, redis_server) -> None:
    config = vision_config(checkpoint("llava"), redis_server.url)
    async with running_vision(config) as one, running_vision(config) as two:
        data = png(23)
        calls = [encode(vision, data, force_inline=True) for _ in range(10) for vision in (one, two)]
        results = await asyncio.gather(*calls)
        assert 1 <= encoded(one) + encoded(two) <= 2
        assert len({r.ref.inline_record for r in results}) == 1


async def test_a_replica_waits_for_the_lease_holder_and_takes_its_result(checkpoint, redis_server) -> None:
    path = checkpoint("llava")
    data = png(24)
    image_id = image_id_of(data)
    async with running_vision(vision_config(path, "")) as elsewhere:  # the holder's computation
        good = (await encode(elsewhere, data)).ref.inline_record
    async with running_vision(vision_config(path, redis_server.url)) as waiter:
        cache = waiter.service.cache
        assert await cache.try_lease(image_id, "another-replica", 30)
        waiting = asyncio.ensure_future(encode(waiter, data))
        await asyncio.sleep(0.3)
        assert not waiting.done() and encoded(waiter) == 0
        assert await cache.put(decode_inline(good, cache.expected(image_id)))  # the holder stores ...
        await cache.release_lease(image_id, "another-replica")  # ... and lets go
        result = await asyncio.wait_for(waiting, 5)
        assert result.cache_hit and encoded(waiter) == 0
        assert decode_inline(good, cache.expected(image_id)).features.shape[0] == result.ref.num_tokens


async def test_a_dead_lease_holder_does_not_deadlock(checkpoint, redis_server) -> None:
    async with running_vision(vision_config(checkpoint("llava"), redis_server.url)) as vision:
        data = png(25)
        assert await vision.service.cache.try_lease(image_id_of(data), "died-mid-encode", 0.8)
        began = time.monotonic()
        result = await asyncio.wait_for(encode(vision, data), 10)
        assert not result.cache_hit and encoded(vision) == 1
        assert 0.7 <= time.monotonic() - began < 5

    # a holder that never lets go: the waiter gives up after lease_wait_seconds and encodes
    config = vision_config(checkpoint("llava"), redis_server.url, lease_wait_seconds=0.5)
    async with running_vision(config) as vision:
        data = png(26)
        assert await vision.service.cache.try_lease(image_id_of(data), "stuck", 60)
        result = await asyncio.wait_for(encode(vision, data), 10)
        assert encoded(vision) == 1 and not result.ref.inline_record


async def test_redis_outage_answers_inline_and_recovers(checkpoint) -> None:
    with LocalRedis() as redis:
        config = vision_config(checkpoint("qwen2_vl"), redis.url, redis_timeout_seconds=0.2)
        async with running_vision(config) as vision:
            stored = await encode(vision, png(31))
            assert not stored.ref.inline_record
            redis.stop()
            expected = vision.service.cache.expected
            for seed in (31, 32, 33, 34):  # known and new images, breaker closed then open
                began = time.monotonic()
                result = await encode(vision, png(seed))
                assert time.monotonic() - began < 2
                assert decode_inline(result.ref.inline_record, expected(result.ref.image_id)).features.numel()
            redis.start()
            deadline = time.monotonic() + 10
            while (result := await encode(vision, png(35))).ref.inline_record:
                assert time.monotonic() < deadline, "no recovery after Redis came back"
                await asyncio.sleep(0.2)
            again = await encode(vision, png(35))
            assert again.cache_hit and not again.ref.inline_record


async def test_image_ids_are_not_found_when_unknown_and_unavailable_while_redis_is_down(checkpoint) -> None:
    with LocalRedis() as redis:
        async with running_vision(vision_config(checkpoint("llava"), redis.url)) as vision:
            known = (await encode(vision, png(36))).ref.image_id
            async with grpc.aio.insecure_channel(vision.address) as channel:
                stub = vision_pb2_grpc.VisionServiceStub(channel)

                async def status_for(image_id: str) -> tuple[grpc.StatusCode, str]:
                    images = [vision_pb2.ImageInput(image_id=image_id)]
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.Encode(vision_pb2.EncodeRequest(images=images))
                    return info.value.code(), info.value.details() or ""

                assert (await status_for(image_id_of(b"x")))[0] == grpc.StatusCode.NOT_FOUND
                redis.stop()
                for image_id in (image_id_of(b"x"), known):
                    code, details = await status_for(image_id)
                    assert code == grpc.StatusCode.UNAVAILABLE, image_id
                    assert "unreachable" in details and "send the image bytes" in details
            assert (await encode(vision, png(36))).ref.inline_record  # bytes still work


def test_corrupt_value_helper_covers_the_cases() -> None:
    tensor = torch.ones(4, 8)
    header, raw = record.make_header(fingerprint="f" * 32, image_id="a" * 64, tensor=tensor)
    good = record.encode(header, raw)
    expected = record.Expected("f" * 32, 8, "a" * 64)
    for name, bad in corrupt_values(good).items():
        with pytest.raises(record.BadRecord):
            decode_inline(bad, expected)
        assert bad != good, name


@pytest.mark.parametrize("kind", ["redis", "memory"])
async def test_a_header_read_checks_lengths_and_chunks_without_the_tensor(redis_server, kind: str) -> None:
    store: KeyValueStore = RedisStore(connect_redis(redis_server.url)) if kind == "redis" else MemoryStore()
    settings = CacheSettings(prefix=f"t{uuid.uuid4().hex[:8]}", chunk_bytes=64 * 1024)
    cache = EmbeddingCache(store, "f" * 32, 8, settings)
    try:
        embeddings = []
        for name, tokens in (("small", 4), ("chunked", 5000)):  # 5000 x 8 float32 = 3 chunks
            features = torch.randn(tokens, 8)
            header, _ = record.make_header(
                fingerprint="f" * 32, image_id=image_id_of(name.encode()), tensor=features
            )
            embeddings.append(Embedding(header, features))
            assert await cache.put(embeddings[-1])
        for embedding in embeddings:
            found = await cache.get_header(embedding.header.image_id)
            assert found is not None and found.num_tokens == embedding.header.num_tokens
        assert (await store.get_many([cache.key(embeddings[1].header.image_id)]))[0] is not None
        assert (
            cache.metrics.get("vision_cache_hits") == 2
            and await cache.get_header(image_id_of(b"new")) is None
        )
        small, chunked = (cache.key(e.header.image_id) for e in embeddings)
        (value,) = await store.get_many([small])
        assert value is not None
        await store.put_many([(small, value[:-4])], 60)  # truncated tensor bytes
        await store.put_many([(f"{chunked}:2", b"short")], 60)  # a chunk of the wrong length
        for embedding in embeddings:
            assert await cache.get_header(embedding.header.image_id) is None
        assert cache.metrics.get("vision_cache_bad_values") == 2
        assert await store.get_many([small, chunked]) == [None, None]  # deleted
        assert cache.metrics.get("vision_cache_misses") == 1
    finally:
        await store.close()
