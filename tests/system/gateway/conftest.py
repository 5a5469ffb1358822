"""Fixtures of the gateway's system tests: whole split systems, started once per package, and
the gateway in front of fake services (support/fake_system.py), started per test, and a session
store on each backend."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.session_memory import MemorySessionStore
from gateway.session_redis import RedisSessionStore
from gateway.sessions import SessionStore
from tandem.redis_local import LocalRedis
from tests.support.fake_system import StartSystem, System, start_fake_system
from tests.support.gateway_stack import Stack, start_stack


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def stacks(checkpoint, redis_server: LocalRedis) -> AsyncIterator[dict[str, Stack]]:  # type: ignore[no-untyped-def]
    """LLaVA and a text-only Llama, each behind its own gateway."""
    async with contextlib.AsyncExitStack() as exits:
        yield {
            kind: await start_stack(kind, checkpoint(kind), redis_server.url, exits)
            for kind in ("llava", "llama")
        }


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def qwen2_vl(checkpoint, redis_server: LocalRedis) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    """Qwen2-VL (M-RoPE, grid_thw) behind its own gateway, started only for its tests."""
    async with contextlib.AsyncExitStack() as exits:
        yield await start_stack("qwen2_vl", checkpoint("qwen2_vl"), redis_server.url, exits)


@pytest.fixture(params=["redis", "memory"])
async def store(request: pytest.FixtureRequest, redis_server: LocalRedis) -> AsyncIterator[SessionStore]:
    """A session store with a fresh key prefix, once on the real Redis and once in memory."""
    if request.param == "redis":
        made: SessionStore = RedisSessionStore.connect(redis_server.url, f"t{uuid.uuid4().hex[:8]}")
    else:
        made = MemorySessionStore()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def start_system(redis_server: LocalRedis) -> AsyncIterator[StartSystem]:
    """Start fakes + gateway; everything started is stopped at the end, even after a failure."""
    async with contextlib.AsyncExitStack() as exits:

        async def start(redis_url: str | None = None, **options: Any) -> System:
            return await start_fake_system(exits, redis_url or redis_server.url, **options)

        yield start
