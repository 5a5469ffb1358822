"""Deadlines, cancellation and admission control of the vision service (real gRPC, real Redis).

The encoder is held at a gate (the adapter's ``encode`` waits on an event), so the tests decide
exactly which images are being encoded, which are queued behind them and when the forward ends.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
import torch
from vlm.v1 import vision_pb2, vision_pb2_grpc

from tandem.embeddings.cache import image_id_of
from tandem.errors import DeadlineExceeded
from tandem.serving.bootstrap import channel_options
from tandem.testing.checkpoints import make_test_image
from tests.support.waiting import eventually
from vision_service.config import VisionConfig
from vision_service.domain import ImageInput
from vision_service.inprocess import RunningVision, running_vision


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    make_test_image(seed, (32, 32)).save(buf, "PNG")
    return buf.getvalue()


def vision_config(model: Path, redis_url: str, **overrides: Any) -> VisionConfig:
    values: dict[str, Any] = {"model": str(model), "redis_url": redis_url, "port": 0, "reflection": False}
    values["cache_prefix"] = f"t{uuid.uuid4().hex[:8]}"
    return VisionConfig(**(values | overrides))


class Gate:
    """Holds encoder forwards while closed (as it starts); ``started`` is set when one waits."""

    def __init__(self, vision: RunningVision):
        self.started = threading.Event()
        self._open = threading.Event()
        adapter = vision.service.adapter
        original = adapter.encode

        def gated(batch: list[Any]) -> list[torch.Tensor]:
            self.started.set()
            self._open.wait(30)
            return original(batch)

        adapter.encode = gated  # type: ignore[method-assign]

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 10), "no forward started"

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.started.clear()
        self._open.clear()


@pytest.fixture
async def gated(checkpoint, redis_server, request) -> AsyncIterator[tuple[RunningVision, Gate, Any]]:
    """A served llava vision service with a closed encoder gate, a stub, and the gate."""
    overrides = getattr(request, "param", {})
    async with running_vision(vision_config(checkpoint("llava"), redis_server.url, **overrides)) as vision:
        gate = Gate(vision)
        async with grpc.aio.insecure_channel(vision.address, options=channel_options(64 << 20)) as channel:
            try:
                yield vision, gate, vision_pb2_grpc.VisionServiceStub(channel)
            finally:
                gate.open()


def encode_call(stub: Any, *images: bytes, timeout: float | None = None) -> Any:
    inputs = [vision_pb2.ImageInput(data=data) for data in images]
    return stub.Encode(vision_pb2.EncodeRequest(images=inputs), timeout=timeout)


async def status_of(call: Any, began: float) -> tuple[grpc.StatusCode, str, float]:
    """(code, details, seconds from ``began`` until the call ended) of an in-flight call."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", time.monotonic() - began
    return grpc.StatusCode.OK, "", time.monotonic() - began


async def stored_keys(redis_url: str, prefix: str) -> set[str]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {key async for key in client.scan_iter(match=f"{prefix}:*")}
    finally:
        await client.aclose()


def leaders() -> list[asyncio.Task[Any]]:
    """The vision service's running leader tasks (one per request that brought new images)."""
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "") == "_lead"]


async def test_deadlines_and_cancellation_drop_unwanted_work(gated, redis_server) -> None:
    vision, gate, stub = gated
    service = vision.service
    began = {"x": time.monotonic()}
    started_x = encode_call(stub, png(1), timeout=0.5)  # its forward starts, then its deadline passes
    await gate.wait_started()
    began["a"] = time.monotonic()
    queued_a = encode_call(stub, png(2), timeout=0.5)  # queued behind x, deadline passes
    queued_b = encode_call(stub, png(3))  # queued, then the client cancels
    shared = [encode_call(stub, png(4), timeout=0.5), encode_call(stub, png(4))]  # one caller stays
    domain = asyncio.ensure_future(service.encode([ImageInput(data=png(5))], timeout=0.5))
    await eventually(lambda: service.encoder.backlog == 4)  # a, b, shared, domain wait behind x
    assert len(leaders()) == 5
    queued_b.cancel()
    for name, call in (("x", started_x), ("a", queued_a), ("a", shared[0])):
        code, _, seconds = await status_of(call, began[name])
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and seconds < 1.0, name
    with pytest.raises(DeadlineExceeded):
        await domain
    assert await queued_b.code() == grpc.StatusCode.CANCELLED
    gate.open()
    kept = await shared[1]
    assert kept.images[0].ref.num_tokens > 0 and not kept.images[0].ref.inline_record
    await eventually(lambda: service.pending_images == 0 and not service.flights)
    assert not leaders()  # no leaked work
    await asyncio.sleep(0.2)  # time for any late write to land
    metrics = service.metrics
    assert metrics.get("vision_images_encoded") == 2  # x (already running) and the shared image
    assert metrics.get("vision_images_dropped") == 3  # a, b and the domain call's image: never run
    cache = service.cache
    assert cache is not None
    wanted = {cache.key(image_id_of(png(4))), cache.image_key(image_id_of(png(4)))}
    assert await stored_keys(redis_server.url, cache.settings.prefix) == wanted  # no leases left


@pytest.mark.parametrize("gated", [{"max_pending_images": 2, "max_images_per_request": 2}], indirect=True)
async def test_admission_refuses_the_excess_and_serves_the_rest(gated) -> None:
    vision, gate, stub = gated
    service = vision.service
    gate.open()
    await encode_call(stub, png(10))  # cached before the encoder gets busy
    gate.close()
    admitted = encode_call(stub, png(11), png(12))
    await gate.wait_started()
    code, details, seconds = await status_of(encode_call(stub, png(13)), time.monotonic())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry later" in details
    assert seconds < 0.5
    hit = await encode_call(stub, png(10), timeout=2)  # a cache hit needs no encoder: served
    assert hit.images[0].cache_hit
    joined = encode_call(stub, png(12))  # joins an image already admitted: not refused
    await eventually(lambda: service.flights.waiters(image_id_of(png(12))) == 2)
    gate.open()
    assert len((await admitted).images) == 2 and not (await joined).images[0].cache_hit
    assert service.pending_images == 0 and service.metrics.get("vision_images_refused") == 1
    again = await encode_call(stub, png(13), timeout=5)
    assert not again.images[0].cache_hit and service.metrics.get("vision_images_encoded") == 4
