"""The language server's edges: errors, inline and corrupt embeddings, deadlines, cancel, process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import torch
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vlm.v1 import common_pb2, llm_pb2, llm_pb2_grpc

from llm_service.config import LlmConfig
from llm_service.conversation import ChatMessage, GenerationRequest, TextPart
from llm_service.engine import SamplingConfig
from llm_service.server import LanguageApp
from tandem.embeddings import record
from tandem.embeddings.cache import image_id_of
from tandem.errors import DeadlineExceeded
from tests.support.gateway_stack import engine_idle
from tests.support.streams import cancel_after

pytestmark = pytest.mark.asyncio(loop_scope="module")

USER = common_pb2.ROLE_USER


def text_request(text: str = "Describe the red car near the water.", **sampling: Any) -> Any:
    message = common_pb2.Message(role=USER, parts=[common_pb2.ContentPart(text=text)])
    params = common_pb2.SamplingParams(**({"max_new_tokens": 8} | sampling))
    return llm_pb2.GenerateTokensRequest(messages=[message], sampling=params)


async def collect(stub: llm_pb2_grpc.LanguageServiceStub, req: Any, timeout: float = 60) -> list[Any]:
    return [chunk async for chunk in stub.GenerateTokens(req, timeout=timeout)]


async def status_of(stub: llm_pb2_grpc.LanguageServiceStub, req: Any, timeout: float = 60) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as info:
        await collect(stub, req, timeout)
    return info.value.code()


class Served:
    def __init__(self, app: LanguageApp, channel: aio.Channel):
        self.app = app
        self.stub = llm_pb2_grpc.LanguageServiceStub(channel)


@contextlib.asynccontextmanager
async def serve(config: LlmConfig) -> AsyncIterator[Served]:
    """A started ``LanguageApp`` for ``config`` and a stub on it; stopped at the end."""
    app = LanguageApp(config)
    port = await app.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Served(app, channel)
    finally:
        await app.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def llava(checkpoint, redis_server) -> AsyncIterator[Served]:  # type: ignore[no-untyped-def]
    config = LlmConfig(model=str(checkpoint("llava")), redis_url=redis_server.url, port=0)
    async with serve(config) as served:
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def small_context(checkpoint) -> AsyncIterator[Served]:  # type: ignore[no-untyped-def]
    config = LlmConfig(model=str(checkpoint("qwen2")), port=0, context_length=64, max_batch_size=2)
    async with serve(config) as served:
        yield served


def inline_ref(fingerprint: str, features: torch.Tensor, image_id: str = "12" * 32) -> common_pb2.ImageRef:
    header, raw = record.make_header(fingerprint=fingerprint, image_id=image_id, tensor=features)
    return common_pb2.ImageRef(
        image_id=image_id, num_tokens=features.shape[0], inline_record=record.encode(header, raw)
    )


def image_request(ref: common_pb2.ImageRef) -> Any:
    parts = [common_pb2.ContentPart(image=ref), common_pb2.ContentPart(text="What is this?")]
    return llm_pb2.GenerateTokensRequest(
        messages=[common_pb2.Message(role=USER, parts=parts)],
        sampling=common_pb2.SamplingParams(max_new_tokens=6),
    )


BAD_REQUESTS = {
    "no messages": llm_pb2.GenerateTokensRequest(),
    "no role": llm_pb2.GenerateTokensRequest(
        messages=[common_pb2.Message(parts=[common_pb2.ContentPart(text="x")])]
    ),
    "empty part": llm_pb2.GenerateTokensRequest(
        messages=[common_pb2.Message(role=USER, parts=[common_pb2.ContentPart()])]
    ),
    "top_p": text_request(top_p=1.5),
    "temperature": text_request(temperature=-1.0),
    "repetition": text_request(repetition_penalty=-2.0),
    "stop strings": text_request(stop=["x"] * 17),
    "image id": image_request(common_pb2.ImageRef(image_id="../../etc", num_tokens=16)),
    "zero tokens": image_request(common_pb2.ImageRef(image_id="ab" * 32, num_tokens=0)),
    "image over context": image_request(common_pb2.ImageRef(image_id="ab" * 32, num_tokens=5000)),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_requests_are_invalid_argument(llava: Served, case: str) -> None:
    assert await status_of(llava.stub, BAD_REQUESTS[case]) == grpc.StatusCode.INVALID_ARGUMENT


async def test_inline_embedding_is_used_and_validated(llava: Served) -> None:
    info = (await llava.stub.GetLanguageInfo(llm_pb2.GetLanguageInfoRequest())).info
    features = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    chunks = await collect(llava.stub, image_request(inline_ref(info.fingerprint, features)))
    assert chunks[-1].usage.image_tokens == features.shape[0] == 16
    assert sum(len(c.token_ids) for c in chunks) == 6
    wrong = inline_ref("0" * 32, features)
    assert await status_of(llava.stub, image_request(wrong)) == grpc.StatusCode.INVALID_ARGUMENT
    short = inline_ref(info.fingerprint, features[:8])
    short.num_tokens = 16
    assert await status_of(llava.stub, image_request(short)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_corrupt_cached_value_is_deleted_and_not_found(llava: Served) -> None:
    cache = llava.app.current().features.cache
    assert cache is not None
    image_id = image_id_of(b"corrupt")
    await cache.store.put_many([(cache.key(image_id), b"\x80\x04pickle-ish garbage")], 60)
    ref = common_pb2.ImageRef(image_id=image_id, num_tokens=16)
    bad_before = llava.app.metrics.get("vision_cache_bad_values")
    assert await status_of(llava.stub, image_request(ref)) == grpc.StatusCode.NOT_FOUND
    assert llava.app.metrics.get("vision_cache_bad_values") == bad_before + 1
    assert await cache.store.get_many([cache.key(image_id)]) == [None]


async def test_text_far_over_the_context_is_refused_before_tokenising(small_context: Served) -> None:
    worker = small_context.app.current()
    huge = "word " * (worker.info.context_length * 256 // 5 + 1)  # just over 256 chars per token
    started = time.perf_counter()
    with pytest.raises(aio.AioRpcError) as info:
        await collect(small_context.stub, text_request(huge))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "characters of text" in (info.value.details() or "")
    assert time.perf_counter() - started < 5.0


async def test_default_max_new_tokens_is_clamped_to_the_context(small_context: Served) -> None:
    chunks = await collect(small_context.stub, text_request(max_new_tokens=0))
    usage = chunks[-1].usage
    assert usage.prompt_tokens + usage.completion_tokens == 64
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert (
        await status_of(small_context.stub, text_request(max_new_tokens=60))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_deadline_and_cancel_free_the_engine(llava: Served) -> None:
    long = text_request(max_new_tokens=1000)
    assert await status_of(llava.stub, long, timeout=0.3) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await engine_idle(llava.app)
    await cancel_after(llava.stub.GenerateTokens(long), 3)
    assert await engine_idle(llava.app)
    worker = llava.app.current()
    generation = GenerationRequest(
        "deadline",
        (ChatMessage("user", (TextPart("Describe the red car near the water."),)),),
        SamplingConfig(max_new_tokens=1000),
    )
    with pytest.raises(DeadlineExceeded):
        async for _ in worker.generate(generation, timeout=0.2):
            pass
    assert await engine_idle(llava.app)


async def test_unavailable_until_loaded(checkpoint) -> None:  # type: ignore[no-untyped-def]
    app = LanguageApp(LlmConfig(model=str(checkpoint("llama")), port=0))
    port = await app.server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = (await health.Check(health_pb2.HealthCheckRequest(service=""))).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = llm_pb2_grpc.LanguageServiceStub(channel)
            assert await status_of(stub, text_request()) == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the crash, re-raised
async def test_an_engine_that_dies_takes_the_worker_out_of_service(checkpoint) -> None:  # type: ignore[no-untyped-def]
    app = LanguageApp(LlmConfig(model=str(checkpoint("llama")), port=0))
    port = await app.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub, health = llm_pb2_grpc.LanguageServiceStub(channel), health_pb2_grpc.HealthStub(channel)
            assert len(await collect(stub, text_request())) >= 1 and app.failure is None

            def crash() -> None:
                raise RuntimeError("a bug outside the per-request guards")

            assert app.worker is not None
            app.worker.engine._core.step = crash  # type: ignore[attr-defined]
            assert await status_of(stub, text_request()) == grpc.StatusCode.UNAVAILABLE  # the one in flight
            for _ in range(100):
                if app.failure is not None:
                    break
                await asyncio.sleep(0.05)
            assert app.failure is not None and "crashed" in app.failure
            status = (await health.Check(health_pb2.HealthCheckRequest(service=""))).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await status_of(stub, text_request()) == grpc.StatusCode.UNAVAILABLE  # refused at once
    finally:
        await app.stop()


async def test_python_m_llm_service_serves_and_exits_on_sigterm(
    checkpoint, redis_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    port_file, log_file = tmp_path / "port", tmp_path / "llm.log"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([".", "protos"])}
    command = [sys.executable, "-m", "llm_service", "--model", str(checkpoint("llama")), "--port", "0"]
    command += ["--port-file", str(port_file), "--redis-url", redis_server.url]
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        port = await _wait_for_port(port_file, process)
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await _wait_serving(health_pb2_grpc.HealthStub(channel))
            chunks = await collect(llm_pb2_grpc.LanguageServiceStub(channel), text_request(max_new_tokens=5))
            assert sum(len(c.token_ids) for c in chunks) == 5
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0, log_file.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _wait_for_port(port_file: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        assert process.poll() is None, "llm_service exited during start-up"
        await asyncio.sleep(0.1)
    raise AssertionError("llm_service never wrote its port")


async def _wait_serving(health: health_pb2_grpc.HealthStub) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = await health.Check(health_pb2.HealthCheckRequest(service="vlm.v1.LanguageService"))
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("llm_service never reported SERVING")
