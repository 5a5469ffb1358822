"""State and cache are separate Redis roles (issue 11, findings 3, 4 and 5).

A whole LLaVA system whose cache is a small ``allkeys-lru`` Redis (``LocalRedis(maxmemory=...)``)
and whose state is another, persistent Redis:

- a stateless request's image bytes expire soon (``--image-ttl-seconds``), a session's image
  bytes live in the state role as long as the session;
- a flood of large stateless images evicts the cache, and every session is still readable and
  answerable (its images are re-encoded from the kept bytes), even after the cache lost
  everything;
- health is NOT_SERVING while the state Redis is down (liveness stays SERVING), SERVING once it
  is back, with the committed turns intact (``kill -9`` of a Redis with its append-only file);
- a state Redis that evicts is refused at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from vlm.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.app import GatewayApp, StartupError
from gateway.config import GatewayConfig
from llm_service.config import LlmConfig
from llm_service.server import LanguageApp
from tandem.redis_local import LocalRedis
from tandem.serving.bootstrap import channel_options
from tandem.serving.readiness import LIVENESS
from tests.support.gateway_stack import greedy, messages, part, png, reply

pytestmark = pytest.mark.asyncio(loop_scope="module")

IMAGE_TTL = 60
SESSION_TTL = 5000


@dataclass
class System:
    prefix: str
    cache: LocalRedis
    state: LocalRedis
    gateway: GatewayApp
    stub: gateway_pb2_grpc.GatewayServiceStub
    health: health_pb2_grpc.HealthStub

    def client(self, redis: LocalRedis) -> aioredis.Redis:
        return aioredis.Redis.from_url(redis.url)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(checkpoint, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:  # type: ignore[no-untyped-def]
    from vision_service.config import VisionConfig
    from vision_service.inprocess import running_vision

    path, prefix = str(checkpoint("llava")), f"roles{uuid.uuid4().hex[:8]}"
    with (
        LocalRedis(maxmemory="6mb") as cache,
        LocalRedis(data_dir=tmp_path_factory.mktemp("state")) as state,
    ):
        async with contextlib.AsyncExitStack() as exits:
            vision_config = VisionConfig(
                model=path, redis_url=cache.url, port=0, cache_prefix=prefix, image_ttl_seconds=IMAGE_TTL
            )
            vision = await exits.enter_async_context(running_vision(vision_config))
            llm = LanguageApp(
                LlmConfig(model=path, redis_url=cache.url, port=0, device="cpu", cache_prefix=prefix)
            )
            llm_port = await llm.start()
            exits.push_async_callback(llm.stop)
            gateway = GatewayApp(
                GatewayConfig(
                    llm_addresses=(f"127.0.0.1:{llm_port}",),
                    vision_addresses=(vision.address,),
                    redis_url=cache.url,
                    state_redis_url=state.url,
                    cache_prefix=prefix,
                    port=0,
                    grace_seconds=1,
                    health_check_seconds=0.2,
                    redis_timeout_seconds=0.5,
                    max_session_ttl_seconds=SESSION_TTL,
                )
            )
            port = await gateway.start()
            exits.push_async_callback(gateway.stop)
            channel = aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(64 << 20))
            exits.push_async_callback(channel.close)
            yield System(
                prefix,
                cache,
                state,
                gateway,
                gateway_pb2_grpc.GatewayServiceStub(channel),
                health_pb2_grpc.HealthStub(channel),
            )


def noise_png(seed: int, side: int = 420) -> bytes:
    """An incompressible PNG of about ``3 * side**2`` bytes."""
    data = random.Random(seed).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), data).save(out, format="PNG", compress_level=0)
    return out.getvalue()


async def _session_with_image(system: System, seed: int) -> tuple[str, str]:
    """A new session whose one committed turn holds an image; (session id, image id)."""
    created = await system.stub.CreateSession(gateway_pb2.CreateSessionRequest(ttl_seconds=SESSION_TTL))
    session_id = created.session.session_id
    turn = gateway_pb2.ChatRequest(
        session_id=session_id, parts=[part(png(seed)), part("what is it?")], sampling=greedy(2)
    )
    got = await reply(system.stub.Chat(turn))
    return session_id, got.first.image_ids[0]


async def _answerable(system: System, session_id: str, turns: int) -> None:
    """The session lists ``turns`` committed turns, and takes one more."""
    stored = await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id))
    assert len(stored.session.messages) == 2 * turns
    request = gateway_pb2.ChatRequest(session_id=session_id, parts=[part("and now?")], sampling=greedy(2))
    await reply(system.stub.Chat(request))


async def test_stateless_images_expire_soon_and_session_images_live_with_the_session(system: System) -> None:
    cache, state = system.client(system.cache), system.client(system.state)
    try:
        request = gateway_pb2.GenerateRequest(
            messages=messages([("user", [png(70), "hi"])]), sampling=greedy(2)
        )
        stateless = (await reply(system.stub.Generate(request))).first.image_ids[0]
        assert 0 < await cache.ttl(f"{system.prefix}:img:{stateless}") <= IMAGE_TTL
        assert not await state.exists(f"{system.prefix}:session-image:{stateless}")

        session_id, image_id = await _session_with_image(system, 71)
        record_ttl = await state.ttl(f"{system.prefix}:session:{session_id}")
        kept_ttl = await state.ttl(f"{system.prefix}:session-image:{image_id}")
        assert SESSION_TTL - 10 < record_ttl <= kept_ttl <= SESSION_TTL
        assert 0 < await cache.ttl(f"{system.prefix}:img:{image_id}") <= IMAGE_TTL
        assert not await state.exists(f"{system.prefix}:img:{image_id}")  # no cache keys in the state role
    finally:
        await cache.aclose()
        await state.aclose()


async def test_a_flood_of_stateless_images_leaves_every_session_answerable(system: System) -> None:
    sessions = [await _session_with_image(system, seed) for seed in range(80, 83)]
    cache = system.client(system.cache)
    try:
        for seed in range(24):  # about 12 MB of image bytes into a 6 MB cache
            flood = gateway_pb2.GenerateRequest(
                messages=messages([("user", [noise_png(seed), "describe"])]), sampling=greedy(1)
            )
            await reply(system.stub.Generate(flood))
        assert int((await cache.info("stats"))["evicted_keys"]) > 0
        for session_id, _ in sessions:
            await _answerable(system, session_id, turns=1)

        await cache.flushall()  # the cache lost everything: embeddings and image bytes
        for session_id, image_id in sessions:
            await _answerable(system, session_id, turns=2)
            assert await cache.exists(f"{system.prefix}:img:{image_id}")  # re-encoded from kept bytes
    finally:
        await cache.aclose()


async def _health(system: System, service: str = "") -> int:
    reply = await system.health.Check(health_pb2.HealthCheckRequest(service=service))
    return int(reply.status)


async def _until_health(system: System, status: int, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while await _health(system) != status:
            await asyncio.sleep(0.1)


async def test_health_follows_the_state_redis_and_turns_survive_its_kill_9(system: System) -> None:
    session_id, _ = await _session_with_image(system, 90)
    assert await _health(system) == health_pb2.HealthCheckResponse.SERVING
    assert system.state.process is not None
    system.state.process.kill()  # kill -9: no shutdown, no final save
    await asyncio.to_thread(system.state.process.wait)
    await _until_health(system, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await _health(system, LIVENESS) == health_pb2.HealthCheckResponse.SERVING
    await asyncio.to_thread(system.state.start)  # same port, same append-only file
    await _until_health(system, health_pb2.HealthCheckResponse.SERVING)
    await _answerable(system, session_id, turns=1)


async def test_a_state_redis_that_evicts_is_refused_at_start(tmp_path: Path) -> None:
    with LocalRedis(maxmemory="8mb") as evicting:
        app = GatewayApp(
            GatewayConfig(
                llm_addresses=("127.0.0.1:9",),
                redis_url=evicting.url,
                port=0,
                grace_seconds=0.1,
                startup_timeout_seconds=1,
            )
        )
        try:
            with pytest.raises(StartupError, match="maxmemory-policy allkeys-lru"):
                await app.start()
        finally:
            await app.stop()
