"""EmbeddingCache on a real Redis: keys, chunking, validation on read, image bytes, leases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import torch

from tandem.embeddings import record
from tandem.embeddings.cache import (
    CacheSettings,
    Embedding,
    EmbeddingCache,
    chunk_count,
    image_id_of,
    is_image_id,
)
from tandem.embeddings.kv import MemoryStore, RedisStore, connect_redis
from tandem.redis_local import LocalRedis

FINGERPRINT = "a" * 32
HIDDEN = 256
SMALL_CHUNKS = 64 * 1024


@pytest.fixture
async def cache(redis_server: LocalRedis) -> AsyncIterator[EmbeddingCache]:
    """A cache with a private key prefix and small chunks, on the session's real Redis."""
    store = RedisStore(connect_redis(redis_server.url))
    settings = CacheSettings(prefix=f"t{uuid.uuid4().hex[:8]}", chunk_bytes=SMALL_CHUNKS)
    try:
        yield EmbeddingCache(store, FINGERPRINT, HIDDEN, settings)
    finally:
        await store.close()


def embedding(image: bytes, tokens: int = 16, dtype: torch.dtype = torch.bfloat16) -> Embedding:
    features = torch.randn(tokens, HIDDEN).to(dtype)
    header, _ = record.make_header(fingerprint=FINGERPRINT, image_id=image_id_of(image), tensor=features)
    return Embedding(header, features)


async def raw_keys(cache: EmbeddingCache) -> list[str]:
    client = cache.store.client  # type: ignore[attr-defined]
    return sorted(k.decode() for k in await client.keys(f"{cache.settings.prefix}:*"))


def test_image_ids_are_sha256_of_the_bytes() -> None:
    assert image_id_of(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert is_image_id(image_id_of(b"x"))
    assert not is_image_id("A" * 64)
    assert not is_image_id("../../etc/passwd")


async def test_put_then_get_returns_the_same_tensor(cache: EmbeddingCache) -> None:
    stored = embedding(b"img-1")
    assert await cache.put(stored)
    got = await cache.get(stored.header.image_id, num_tokens=16)
    assert got is not None
    assert torch.equal(got.features, stored.features)
    assert got.header.fingerprint == FINGERPRINT
    assert await raw_keys(cache) == [cache.key(stored.header.image_id)]
    assert cache.metrics.get("vision_cache_hits") == 1


async def test_unknown_image_is_a_miss(cache: EmbeddingCache) -> None:
    assert await cache.get(image_id_of(b"never stored")) is None
    assert cache.metrics.get("vision_cache_misses") == 1


async def test_key_has_prefix_fingerprint_and_image_id(cache: EmbeddingCache) -> None:
    image_id = image_id_of(b"k")
    assert cache.key(image_id) == f"{cache.settings.prefix}:emb:{FINGERPRINT}:{image_id}"
    other = EmbeddingCache(cache.store, "b" * 32, HIDDEN, cache.settings)
    assert other.key(image_id) != cache.key(image_id)
    assert cache.image_key(image_id) == f"{cache.settings.prefix}:img:{image_id}"


async def test_another_fingerprint_does_not_see_the_entry(cache: EmbeddingCache) -> None:
    stored = embedding(b"img-fp")
    await cache.put(stored)
    other = EmbeddingCache(cache.store, "b" * 32, HIDDEN, cache.settings)
    assert await other.get(stored.header.image_id) is None


async def test_large_values_are_chunked_and_reassembled(cache: EmbeddingCache) -> None:
    stored = embedding(b"big", tokens=300, dtype=torch.float32)  # 300 KiB -> 5 values
    size = 300 * HIDDEN * 4
    assert await cache.put(stored)
    keys = await raw_keys(cache)
    head = cache.key(stored.header.image_id)
    assert keys == sorted([head] + [f"{head}:{i}" for i in range(1, chunk_count(size, SMALL_CHUNKS) + 1)])
    assert len(keys) == 5
    got = await cache.get(stored.header.image_id)
    assert got is not None
    assert torch.equal(got.features, stored.features)


async def test_a_missing_chunk_is_a_bad_value(cache: EmbeddingCache) -> None:
    stored = embedding(b"big2", tokens=300, dtype=torch.float32)
    await cache.put(stored)
    head = cache.key(stored.header.image_id)
    await cache.store.delete(f"{head}:2")
    assert await cache.get(stored.header.image_id) is None
    assert cache.metrics.get("vision_cache_bad_values") == 1
    assert head not in await raw_keys(cache)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda v: v[:-1],
        lambda v: b"\x80\x04\x95" + v[3:],  # pickle protocol 4 opcode in front
        lambda v: b"garbage",
        lambda v: v.replace(FINGERPRINT.encode(), b"c" * 32),
        lambda v: _with_version(v, 3),
    ],
    ids=["truncated", "pickle-prefixed", "garbage", "other-fingerprint", "newer-version"],
)
async def test_bad_value_is_a_miss_deleted_and_counted(cache: EmbeddingCache, corrupt) -> None:  # type: ignore[no-untyped-def]
    stored = embedding(b"img-bad")
    await cache.put(stored)
    key = cache.key(stored.header.image_id)
    client = cache.store.client  # type: ignore[attr-defined]
    await client.set(key, corrupt(await client.get(key)))
    assert await cache.get(stored.header.image_id) is None
    assert cache.metrics.get("vision_cache_bad_values") == 1
    assert await client.exists(key) == 0
    assert await cache.put(stored)  # recomputed value is stored again
    assert await cache.get(stored.header.image_id) is not None


def _with_version(value: bytes, version: int) -> bytes:
    header, data = record.split(value)
    header.format_version = version
    return record.encode(header, data)


async def test_records_with_extra_tensors_are_chunked_and_round_trip(cache: EmbeddingCache) -> None:
    features = torch.randn(40, HIDDEN)
    extras = {"deepstack": torch.randn(3, 40, HIDDEN)}  # 160 KiB in all: 3 values
    image_id = image_id_of(b"deepstack")
    header = record.header_of(fingerprint=FINGERPRINT, image_id=image_id, tensor=features, extras=extras)
    assert await cache.put(Embedding(header, features, extras))
    assert len(await raw_keys(cache)) == 3
    got = await cache.get(image_id, num_tokens=40)
    assert got is not None and got.header.format_version == record.EXTRAS_VERSION
    assert torch.equal(got.features, features) and torch.equal(got.extras["deepstack"], extras["deepstack"])
    assert await cache.get_header(image_id) is not None
    strict = EmbeddingCache(cache.store, FINGERPRINT, HIDDEN, cache.settings, cache.metrics, ("deepstack",))
    assert await strict.get(image_id) is not None


async def test_a_record_without_the_expected_extras_is_a_bad_value(cache: EmbeddingCache) -> None:
    stored = embedding(b"img-no-extras")
    await cache.put(stored)
    strict = EmbeddingCache(cache.store, FINGERPRINT, HIDDEN, cache.settings, cache.metrics, ("deepstack",))
    assert await strict.get(stored.header.image_id) is None
    assert cache.metrics.get("vision_cache_bad_values") == 1
    assert await cache.get(stored.header.image_id) is None  # deleted: it gets recomputed


async def test_wrong_token_count_is_a_bad_value(cache: EmbeddingCache) -> None:
    stored = embedding(b"img-tokens", tokens=16)
    await cache.put(stored)
    assert await cache.get(stored.header.image_id, num_tokens=17) is None
    assert cache.metrics.get("vision_cache_bad_values") == 1


async def test_image_bytes_are_keyed_by_sha256_and_rehashed_on_read(cache: EmbeddingCache) -> None:
    data = b"\x89PNG pretend image bytes"
    image_id = image_id_of(data)
    assert await cache.put_image_bytes(image_id, data)
    assert await cache.get_image_bytes(image_id) == data
    client = cache.store.client  # type: ignore[attr-defined]
    ttl = await client.ttl(cache.image_key(image_id))
    assert 0 < ttl <= cache.settings.image_ttl_seconds == 900  # stateless images expire soon
    await client.set(cache.image_key(image_id), b"tampered bytes")
    assert await cache.get_image_bytes(image_id) is None
    assert cache.metrics.get("vision_cache_bad_values") == 1
    assert await client.exists(cache.image_key(image_id)) == 0
    assert await cache.get_image_bytes(image_id_of(b"unknown")) is None


async def test_embeddings_expire_with_their_ttl(redis_server: LocalRedis) -> None:
    store = RedisStore(connect_redis(redis_server.url))
    try:
        cache = EmbeddingCache(
            store, FINGERPRINT, HIDDEN, CacheSettings(prefix="ttl", embedding_ttl_seconds=1)
        )
        stored = embedding(b"short-lived")
        await cache.put(stored)
        assert 0 < await store.client.pttl(cache.key(stored.header.image_id)) <= 1000
    finally:
        await store.close()


async def test_leases_are_exclusive_and_expire(cache: EmbeddingCache) -> None:
    image_id = image_id_of(b"leased")
    assert await cache.try_lease(image_id, "replica-a", seconds=5)
    assert not await cache.try_lease(image_id, "replica-b", seconds=5)
    await cache.release_lease(image_id, "replica-b")  # not b's lease: it stays
    assert not await cache.try_lease(image_id, "replica-b", seconds=5)
    await cache.release_lease(image_id, "replica-a")
    assert await cache.try_lease(image_id, "replica-b", seconds=0.1)
    await asyncio.sleep(0.25)  # the holder died: its lease runs out
    assert await cache.try_lease(image_id, "replica-c", seconds=5)
    client = cache.store.client  # type: ignore[attr-defined]
    assert await client.get(cache.lease_key(image_id)) == b"replica-c"


async def test_memory_store_behaves_like_redis_for_the_cache() -> None:
    cache = EmbeddingCache(MemoryStore(), FINGERPRINT, HIDDEN, CacheSettings(chunk_bytes=SMALL_CHUNKS))
    stored = embedding(b"mem", tokens=300, dtype=torch.float32)
    assert await cache.put(stored)
    got = await cache.get(stored.header.image_id)
    assert got is not None and torch.equal(got.features, stored.features)
    assert await cache.try_lease("x" * 64, "a", 5)
    assert not await cache.try_lease("x" * 64, "b", 5)


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        CacheSettings(chunk_bytes=10)
    with pytest.raises(ValueError, match="ttl"):
        CacheSettings(embedding_ttl_seconds=0)
