"""The three arms of ``tandem bench overhead`` (B10) and their samples.

An arm is one way of sending the benchmark's prompt: ``open`` once (load, connect, warm up),
``sample`` per request, ``close`` at the end. ``InProcessArm`` builds the language worker as the
service does; ``GrpcArm`` goes through the gateway with Tandem's Python client; ``HttpArm``
through the gateway's OpenAI endpoint. Each sample's clock starts when the arm is called and stops
at the end of the stream; TTFT at the first event carrying a generated token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tandem.bench.metrics import RequestRecord

if TYPE_CHECKING:
    from tandem.bench.overhead import OverheadConfig

ArmName = Literal["in-process", "grpc", "http", "floor"]


@dataclass
class Sample:
    """One request of one arm. Times in seconds; ``round`` counts measured rounds from 0."""

    arm: ArmName
    round: int
    ttft: float = 0.0
    latency: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int | None = None
    error: str = ""

    @property
    def success(self) -> bool:
        return not self.error

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first; ``None`` with fewer than two tokens."""
        if self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


class Arm(Protocol):
    """One way of sending the prompt: ``open`` once, ``sample`` per request, ``close`` at the end."""

    name: ArmName

    async def open(self) -> None: ...

    async def sample(self, prompt: str, round_: int) -> Sample: ...

    async def close(self) -> None: ...


class InProcessArm:
    """The language worker in this process, built and warmed up as ``LanguageApp.warmup`` does
    (without Redis: a text-only request reads no embedding)."""

    name: ArmName = "in-process"

    def __init__(self, config: OverheadConfig):
        self.config = config
        self.worker: Any = None
        self.fingerprint = ""
        self.last_latency = 0.0  # seconds, of the latest sample (the floor arm computes as long)

    async def open(self) -> None:
        from llm_service.config import LlmConfig
        from llm_service.loader import load
        from llm_service.server import build_worker
        from tandem.metrics import Metrics

        llm_config = LlmConfig(model=self.config.checkpoint, device=self.config.device)
        loaded = await asyncio.to_thread(load, llm_config)
        self.worker = build_worker(llm_config, loaded, None, Metrics.for_service("llm"))
        self.worker.engine.start()
        await self.worker.warmup()
        self.fingerprint = self.worker.info.fingerprint

    async def sample(self, prompt: str, round_: int) -> Sample:
        from llm_service.conversation import ChatMessage, GenerationRequest, TextPart
        from llm_service.engine.types import SamplingConfig

        sampling = SamplingConfig(max_new_tokens=self.config.output_len, ignore_eos=True)
        message = ChatMessage("user", (TextPart(prompt),))
        request = GenerationRequest(f"overhead-{round_}", (message,), sampling)
        sample, started = Sample(self.name, round_), time.perf_counter()
        async for event in self.worker.generate(request, self.config.request_timeout_s):
            if event.token_ids and not sample.output_tokens:
                sample.ttft = time.perf_counter() - started
            sample.output_tokens += len(event.token_ids)
            if event.usage is not None:
                sample.prompt_tokens = event.usage.prompt_tokens
        sample.latency = self.last_latency = time.perf_counter() - started
        return sample

    async def close(self) -> None:
        if self.worker is not None:
            await asyncio.to_thread(self.worker.engine.stop)


class GrpcArm:
    """The gateway over gRPC through ``tandem.client.AsyncPipeline``."""

    name: ArmName = "grpc"

    def __init__(self, config: OverheadConfig, address: str):
        from tandem.client import AsyncPipeline, GenerationConfig

        self.config = config
        self.pipe = AsyncPipeline(address, token=config.api_key, timeout=config.request_timeout_s)
        self.gen_config = GenerationConfig(max_new_tokens=config.output_len, ignore_eos=True)
        self.model, self.fingerprint = "", ""

    async def open(self) -> None:
        info = await self.pipe.model_info()
        self.model, self.fingerprint = info.model, info.fingerprint

    async def sample(self, prompt: str, round_: int) -> Sample:
        sample, started = Sample(self.name, round_), time.perf_counter()
        tokens, usage = 0, None
        async for chunk in self.pipe.stream_infer(prompt, self.gen_config):
            if (chunk.token_ids or chunk.text) and not sample.ttft:
                sample.ttft = time.perf_counter() - started
            tokens += len(chunk.token_ids)
            usage = chunk.usage or usage
        sample.latency = time.perf_counter() - started
        sample.output_tokens = usage.completion_tokens if usage else tokens
        sample.prompt_tokens = usage.prompt_tokens if usage else None
        return sample

    async def close(self) -> None:
        await self.pipe.close()


class HttpArm:
    """The gateway's OpenAI endpoint: one streaming chat completion per sample (aiohttp)."""

    name: ArmName = "http"

    def __init__(self, config: OverheadConfig, base_url: str):
        from tandem.bench.client import Endpoint

        self.config = config
        self.endpoint = Endpoint.of(base_url, config.api_key)
        self.http: Any = None
        self.model = ""

    async def open(self) -> None:
        import aiohttp

        from tandem.bench.client import first_model

        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.config.request_timeout_s)
        self.http = aiohttp.ClientSession(timeout=timeout)
        self.model = await first_model(self.http, self.endpoint)

    async def sample(self, prompt: str, round_: int) -> Sample:
        from tandem.bench.client import stream_chat

        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.config.output_len,
            "temperature": 0.0,
            "ignore_eos": True,
        }
        record = RequestRecord(conversation=round_, turn=0)
        await stream_chat(self.http, self.endpoint, body, record)
        if not record.success:
            raise RuntimeError(record.error)
        sample = Sample(self.name, round_, record.ttft, record.latency, record.output_tokens)
        sample.prompt_tokens = record.prompt_tokens
        return sample

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
