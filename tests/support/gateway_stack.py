"""A whole split system in one process for gateway-level tests: real vision and language
servers, real Redis, the gateway on port 0, a tiny real HF checkpoint and ``generate()`` as the
oracle; plus the proto builders those tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import torch
from grpc import aio
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from gateway.app import GatewayApp
from gateway.config import GatewayConfig
from llm_service.config import LlmConfig
from llm_service.server import LanguageApp
from tandem.models.checkpoint import read_config
from tandem.serving.bootstrap import channel_options
from tandem.testing.checkpoints import make_test_image

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
        messages = [{"role": role, "content": [hf_part(p) for p in parts]} for role, parts in conversation]
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


def is_vlm(path: Path) -> bool:
    """A checkpoint with a vision tower (its config.json has a ``vision_config``)."""
    return "vision_config" in read_config(path)


def hf_part(part: str | bytes) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    return {"type": "image", "image": Image.open(io.BytesIO(part)).convert("RGB")}


async def start_stack(kind: str, path: Path, redis_url: str, exits: contextlib.AsyncExitStack) -> Stack:
    from vision_service.config import VisionConfig
    from vision_service.inprocess import running_vision

    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    vision_addresses: tuple[str, ...] = ()
    if kind in VLMS or is_vlm(path):
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
    if kind in VLMS or is_vlm(path):
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
