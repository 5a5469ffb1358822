"""Storage behind the caches: the circuit breaker, RedisStore during an outage, LocalRedis."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from tandem.embeddings.breaker import CircuitBreaker
from tandem.embeddings.kv import MemoryStore, RedisStore, StoreUnavailable, connect_redis
from tandem.redis_local import LocalRedis, redis_server_binary


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_state_machine() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_seconds=2.0, clock=clock)
    assert breaker.allow() and not breaker.is_open
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow() and not breaker.is_open  # below the threshold
    breaker.record_success()  # success resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert not breaker.is_open
    breaker.record_failure()
    assert breaker.is_open
    assert not breaker.allow()
    clock.now += 1.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()  # half-open: one trial
    assert not breaker.allow()  # ... and only one per reset period
    breaker.record_failure()  # the trial failed: open again for a full period
    assert breaker.is_open and not breaker.allow()
    clock.now += 2.0
    assert breaker.allow()
    breaker.record_success()  # the trial succeeded: closed
    assert not breaker.is_open
    assert breaker.allow() and breaker.allow()


async def test_redis_store_round_trip(private_redis: LocalRedis) -> None:
    store = RedisStore(connect_redis(private_redis.url))
    try:
        await store.put_many([("a", b"1"), ("b", memoryview(b"22"))], ttl_seconds=60)
        assert await store.get_many(["a", "b", "missing"]) == [b"1", b"22", None]
        assert await store.get_many([]) == []
        await store.touch(["a"], 5)
        assert 0 < await store.client.ttl("a") <= 5
        assert await store.put_if_absent("lock", b"me", 1.0)
        assert not await store.put_if_absent("lock", b"you", 1.0)
        await store.delete("a", "lock")
        assert await store.get_many(["a", "lock"]) == [None, None]
    finally:
        await store.close()


async def test_redis_outage_fails_fast_opens_the_breaker_and_recovers(private_redis: LocalRedis) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_seconds=0.3)
    store = RedisStore(connect_redis(private_redis.url, timeout_seconds=0.2), breaker)
    try:
        await store.put_many([("k", b"v")], 60)
        private_redis.stop()
        started = time.perf_counter()
        for _ in range(10):
            with pytest.raises(StoreUnavailable):
                await store.get_many(["k"])
        with pytest.raises(StoreUnavailable):
            await store.put_many([("k", b"v2")], 60)
        assert time.perf_counter() - started < 1.0
        assert breaker.is_open
        private_redis.start()
        assert await _eventually_get(store, "k", timeout=3.0) is None  # restarted empty, but reachable
        assert not breaker.is_open
    finally:
        await store.close()


async def _eventually_get(store: RedisStore, key: str, timeout: float) -> bytes | None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            (value,) = await store.get_many([key])
            return value
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_unreachable_address_fails_fast() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisStore(connect_redis(f"redis://127.0.0.1:{port}/0", timeout_seconds=0.2))
    try:
        started = time.perf_counter()
        for _ in range(5):
            with pytest.raises(StoreUnavailable):
                await store.get_many(["x"])
        assert time.perf_counter() - started < 1.0
        assert store.breaker.is_open
    finally:
        await store.close()


async def test_memory_store_honours_ttls() -> None:
    store = MemoryStore()
    await store.put_many([("a", b"1")], ttl_seconds=60)
    assert await store.get_many(["a"]) == [b"1"]
    store.data["a"] = (b"1", time.monotonic() - 1)
    assert await store.get_many(["a"]) == [None]
    assert await store.put_if_absent("a", b"2", 60)


def test_local_redis_start_stop_restart() -> None:
    assert redis_server_binary()
    server = LocalRedis()
    try:
        server.start()
        pid = server.process.pid if server.process else None
        assert _answers(server.port)
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        server.restart()
        assert server.process is not None and server.process.pid != pid
        assert _answers(server.port)
        server.stop()
        assert server.process is None and not _answers(server.port)
        server.stop()  # idempotent
    finally:
        server.close()


def test_local_redis_context_manager_stops_the_process() -> None:
    with LocalRedis() as server:
        process = server.process
        assert process is not None and _answers(server.port)
    assert process.poll() is not None


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
