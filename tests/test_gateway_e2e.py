"""The whole system through the public API: real vision and language servers, real Redis,
the gateway on port 0, tiny real HF checkpoints, and HF ``generate()`` as the oracle.

Covers one and two images (bytes, data URIs, OpenAI-style messages) for LLaVA and Qwen2-VL, a
Qwen2-VL two-turn session with a new image per turn, a three-turn session
whose third turn names the first turn's image by id while the embeddings are flushed from
Redis and the gateway is restarted between turns, idempotent retries, deadlines and client
cancellation reaching the language engine, and a text-only model (TESTPLAN 1, 2, 14, 23).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import torch
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from gateway.app import GatewayApp
from gateway.config import GatewayConfig
from llm_service.config import LlmConfig
from llm_service.server import LanguageApp
from tandem.redis_local import LocalRedis
from tandem.serving.bootstrap import channel_options
from tandem.testing.checkpoints import make_test_image

pytestmark = pytest.mark.asyncio(loop_scope="module")

N = 10
VLMS = ("llava", "qwen2_vl")
ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}


def png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    make_test_image(seed, size).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Stack:
    """One model served end to end behind a gateway, plus the HF oracle."""

    kind: str
    prefix: str
    llm: LanguageApp
    gateway: GatewayApp
    stub: gateway_pb2_grpc.GatewayServiceStub
    channel: aio.Channel
    full: Any
    processor: Any

    def oracle(self, conversation: list[tuple[str, list[str | bytes]]]) -> list[int]:
        """HF greedy tokens for a conversation of text and PNG-bytes parts."""
        messages = [{"role": role, "content": [_hf_part(p) for p in parts]} for role, parts in conversation]
        inputs = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        with torch.no_grad():
            out = self.full.generate(**inputs, do_sample=False, max_new_tokens=N)
        return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]

    async def restart_gateway(self) -> None:
        await self.channel.close()
        await self.gateway.stop()
        self.gateway = GatewayApp(self.gateway.config)
        port = await self.gateway.start()
        self.channel = aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(64 << 20))
        self.stub = gateway_pb2_grpc.GatewayServiceStub(self.channel)


def _hf_part(part: str | bytes) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    return {"type": "image", "image": Image.open(io.BytesIO(part)).convert("RGB")}


async def _start(kind: str, path: Path, redis_url: str, exits: contextlib.AsyncExitStack) -> Stack:
    from vision_service.config import VisionConfig
    from vision_service.inprocess import running_vision

    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    vision_addresses: tuple[str, ...] = ()
    if kind in VLMS:
        config = VisionConfig(model=str(path), redis_url=redis_url, port=0, cache_prefix=prefix)
        vision_addresses = ((await exits.enter_async_context(running_vision(config))).address,)
    llm = LanguageApp(
        LlmConfig(model=str(path), redis_url=redis_url, port=0, device="cpu", cache_prefix=prefix)
    )
    llm_port = await llm.start()
    exits.push_async_callback(llm.stop)
    gateway = GatewayApp(
        GatewayConfig(
            llm_addresses=(f"127.0.0.1:{llm_port}",),
            vision_addresses=vision_addresses,
            redis_url=redis_url,
            cache_prefix=prefix,
            port=0,
            grace_seconds=1,
        )
    )
    port = await gateway.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(64 << 20))
    if kind in VLMS:
        full, processor = (
            AutoModelForImageTextToText.from_pretrained(path),
            AutoProcessor.from_pretrained(path),
        )
    else:
        full, processor = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    stack = Stack(
        kind,
        prefix,
        llm,
        gateway,
        gateway_pb2_grpc.GatewayServiceStub(channel),
        channel,
        full.eval(),
        processor,
    )

    async def close() -> None:
        await stack.channel.close()
        await stack.gateway.stop()

    exits.push_async_callback(close)
    return stack


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stacks(checkpoint, redis_server: LocalRedis) -> AsyncIterator[dict[str, Stack]]:  # type: ignore[no-untyped-def]
    async with contextlib.AsyncExitStack() as exits:
        yield {
            kind: await _start(kind, checkpoint(kind), redis_server.url, exits) for kind in ("llava", "llama")
        }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def qwen2_vl(checkpoint, redis_server: LocalRedis) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    """Qwen2-VL (M-RoPE, grid_thw) behind its own gateway, started only for its tests."""
    async with contextlib.AsyncExitStack() as exits:
        yield await _start("qwen2_vl", checkpoint("qwen2_vl"), redis_server.url, exits)


def part(value: str | bytes | dict[str, str]) -> gateway_pb2.Part:
    if isinstance(value, str):
        return gateway_pb2.Part(text=value)
    if isinstance(value, bytes):
        return gateway_pb2.Part(image=gateway_pb2.ImageSource(data=value))
    return gateway_pb2.Part(image=gateway_pb2.ImageSource(**value))


def messages(conversation: list[tuple[str, list[Any]]]) -> list[gateway_pb2.ChatMessage]:
    return [
        gateway_pb2.ChatMessage(role=ROLES[r], parts=[part(p) for p in parts]) for r, parts in conversation
    ]


def greedy(n: int = N) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(max_new_tokens=n)


@dataclass
class Reply:
    tokens: list[int]
    text: str
    first: Any
    last: Any


async def reply(call: Any) -> Reply:
    responses = [r async for r in call]
    tokens = [t for r in responses for t in r.token_ids]
    assert responses[-1].finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
    return Reply(tokens, "".join(r.text for r in responses), responses[0], responses[-1])


async def engine_idle(app: LanguageApp, within: float = 3.0) -> bool:
    engine = app.current().engine
    stop = time.monotonic() + within
    while time.monotonic() < stop:
        if engine.running == 0 and engine.waiting == 0:
            return True
        await asyncio.sleep(0.02)
    return False


async def flush_embeddings(redis_url: str, prefix: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:emb:*")]
        if keys:
            await client.delete(*keys)
        return len(keys)
    finally:
        await client.aclose()


async def test_one_image_equals_hf(stacks: dict[str, Stack]) -> None:
    stack = stacks["llava"]
    image = png(1, (112, 56))
    conversation: list[tuple[str, list[Any]]] = [("user", [image, "What is in this image?"])]
    got = await reply(
        stack.stub.Generate(gateway_pb2.GenerateRequest(messages=messages(conversation), sampling=greedy()))
    )
    assert got.tokens == stack.oracle(conversation)
    assert len(got.first.image_ids) == 1 and got.last.usage.image_tokens > 0


async def test_two_images_openai_style_equal_hf(stacks: dict[str, Stack]) -> None:
    stack = stacks["llava"]
    a, b = png(2), png(3, (84, 112))
    uri = "data:image/png;base64," + base64.b64encode(b).decode()
    conversation = [("system", ["Answer briefly."]), ("user", [a, "Compare", {"url": uri}, "these two."])]
    request = gateway_pb2.GenerateRequest(messages=messages(conversation), sampling=greedy())
    got = await reply(stack.stub.Generate(request))
    assert got.tokens == stack.oracle(
        [("system", ["Answer briefly."]), ("user", [a, "Compare", b, "these two."])]
    )
    assert len(got.first.image_ids) == 2


async def test_session_turns_survive_eviction_and_restart(
    stacks: dict[str, Stack], redis_server: LocalRedis
) -> None:
    stack = stacks["llava"]
    image = png(4)
    sid = (await stack.stub.CreateSession(gateway_pb2.CreateSessionRequest())).session.session_id
    history: list[tuple[str, list[Any]]] = []

    async def turn(parts: list[Any], oracle_parts: list[Any], request_id: str) -> Reply:
        request = gateway_pb2.ChatRequest(
            session_id=sid, parts=[part(p) for p in parts], sampling=greedy(), request_id=request_id
        )
        got = await reply(stack.stub.Chat(request, timeout=60))
        history.append(("user", oracle_parts))
        assert got.tokens == stack.oracle(history)
        history.append(("assistant", [got.text]))
        return got

    first = await turn([image, "Describe the picture."], [image, "Describe the picture."], "t1")
    image_id = first.first.image_ids[0]
    assert await flush_embeddings(redis_server.url, stack.prefix) > 0
    await stack.restart_gateway()
    await turn(["And the colours?"], ["And the colours?"], "t2")
    assert await flush_embeddings(redis_server.url, stack.prefix) > 0
    third = await turn([{"image_id": image_id}, "Look again."], [image, "Look again."], "t3")
    assert list(third.first.image_ids) == [image_id]
    retried = await reply(
        stack.stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=[part("x")], request_id="t3"))
    )
    assert retried.first.replayed and retried.tokens == third.tokens
    session = (await stack.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert len(session.messages) == 6
    ids = [p.image_id for m in session.messages for p in m.parts if p.WhichOneof("kind") == "image_id"]
    assert ids == [image_id, image_id]


async def test_qwen2_vl_one_and_two_images_equal_hf(qwen2_vl: Stack) -> None:
    one: list[tuple[str, list[Any]]] = [("user", [png(1, (112, 56)), "What is in this image?"])]
    got = await reply(
        qwen2_vl.stub.Generate(gateway_pb2.GenerateRequest(messages=messages(one), sampling=greedy()))
    )
    assert got.tokens == qwen2_vl.oracle(one)
    assert len(got.first.image_ids) == 1 and got.last.usage.image_tokens > 0
    a, b = png(2), png(3, (84, 112))
    uri = "data:image/png;base64," + base64.b64encode(b).decode()
    two = [("system", ["Answer briefly."]), ("user", [a, "Compare", {"url": uri}, "these two."])]
    got = await reply(
        qwen2_vl.stub.Generate(gateway_pb2.GenerateRequest(messages=messages(two), sampling=greedy()))
    )
    assert got.tokens == qwen2_vl.oracle(
        [("system", ["Answer briefly."]), ("user", [a, "Compare", b, "these two."])]
    )
    assert len(got.first.image_ids) == 2 and len(set(got.first.image_ids)) == 2


async def test_qwen2_vl_second_session_turn_with_a_new_image_equals_hf(qwen2_vl: Stack) -> None:
    sid = (await qwen2_vl.stub.CreateSession(gateway_pb2.CreateSessionRequest())).session.session_id
    history: list[tuple[str, list[Any]]] = []
    for image, prompt in ((png(4), "Describe the picture."), (png(5, (56, 112)), "And now this one?")):
        request = gateway_pb2.ChatRequest(
            session_id=sid, parts=[part(image), part(prompt)], sampling=greedy()
        )
        got = await reply(qwen2_vl.stub.Chat(request, timeout=60))
        history.append(("user", [image, prompt]))
        assert got.tokens == qwen2_vl.oracle(history)
        history.append(("assistant", [got.text]))
    assert got.last.usage.image_tokens > 0
    assert got.last.usage.cached_tokens > 0  # the session's replica reused turn 1's KV, image rows too
    session = (await qwen2_vl.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert len(session.messages) == 4


async def test_deadline_and_cancel_reach_the_language_engine(stacks: dict[str, Stack]) -> None:
    stack = stacks["llava"]
    request = gateway_pb2.GenerateRequest(
        messages=messages([("user", [png(5), "Tell a long story."])]), sampling=greedy(900)
    )
    started = time.monotonic()
    with pytest.raises(aio.AioRpcError) as late:
        await reply(stack.stub.Generate(request, timeout=0.3))
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 3
    assert await engine_idle(stack.llm)
    call = stack.stub.Generate(request)
    seen = 0
    async for _ in call:
        seen += 1
        if seen == 3:
            call.cancel()
            break
    assert await engine_idle(stack.llm)


async def test_text_only_model(stacks: dict[str, Stack]) -> None:
    stack = stacks["llama"]
    info = (await stack.stub.GetModelInfo(gateway_pb2.GetModelInfoRequest())).info
    assert not info.is_vlm and info.architecture == "LlamaForCausalLM"
    conversation: list[tuple[str, list[Any]]] = [("user", ["Say something."])]
    got = await reply(
        stack.stub.Generate(gateway_pb2.GenerateRequest(messages=messages(conversation), sampling=greedy()))
    )
    assert got.tokens == stack.oracle(conversation)
    with pytest.raises(aio.AioRpcError) as refused:
        await reply(
            stack.stub.Generate(gateway_pb2.GenerateRequest(messages=messages([("user", [png(6), "hi"])])))
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "this model is text-only; remove the image parts"
    with pytest.raises(aio.AioRpcError) as missing:
        await reply(stack.stub.Chat(gateway_pb2.ChatRequest(session_id="0" * 32, parts=[part("hi")])))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_python_m_gateway_serves_and_drains_on_sigterm(
    stacks: dict[str, Stack], redis_server: LocalRedis, tmp_path: Path
) -> None:
    port_file = tmp_path / "port"
    llm_address = stacks["llama"].gateway.config.llm_addresses[0]
    args = [
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--llm-addresses",
        llm_address,
        "--redis-url",
        redis_server.url,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([".", "protos"])}
    process = subprocess.Popen([sys.executable, "-m", "gateway", *args], env=env, stderr=subprocess.PIPE)
    try:
        stop = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert process.poll() is None and time.monotonic() < stop
            await asyncio.sleep(0.1)
        async with aio.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < stop
                await asyncio.sleep(0.1)
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            got = await reply(
                stub.Generate(
                    gateway_pb2.GenerateRequest(messages=messages([("user", ["hi"])]), sampling=greedy(3))
                )
            )
            assert len(got.tokens) <= 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


async def test_python_m_gateway_refuses_a_vlm_without_a_vision_service(
    stacks: dict[str, Stack], redis_server: LocalRedis
) -> None:
    llm_address = stacks["llava"].gateway.config.llm_addresses[0]
    args = ["--port", "0", "--llm-addresses", llm_address, "--redis-url", redis_server.url]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([".", "protos"])}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 2
    assert b"give --vision-addresses" in done.stderr and b"Traceback" not in done.stderr
