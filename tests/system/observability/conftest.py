"""One traced, measured system for the observability tests: the three services in this process.

Vision, language and gateway servers (tiny LLaVA, real Redis, ports 0), each with its own
metrics registry and its own ``Tracing`` into one in-memory exporter; the workers serve
``/metrics`` on their metrics ports, the gateway on its HTTP port. Started once per package.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from grpc import aio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from gateway.app import GatewayApp
from gateway.config import GatewayConfig
from llm_service.config import LlmConfig
from llm_service.server import LanguageApp
from tandem.redis_local import LocalRedis
from tandem.serving.bootstrap import channel_options
from tandem.serving.logs import RequestIdFilter
from tandem.serving.tracing import Tracing
from tandem.testing.checkpoints import make_test_image
from vision_service.app import VisionApp
from vision_service.config import VisionConfig


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True)
class Scrape:
    """A parsed ``/metrics`` answer: metric types by family name, sample values by name+labels."""

    types: dict[str, str]
    samples: Samples

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples ``name`` whose labels include ``labels`` (0 if none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def labels(self, name: str) -> list[dict[str, str]]:
        return [dict(ls) for n, ls in self.samples if n == name]


def parse(text: str) -> Scrape:
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return Scrape(types, samples)


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A blocking HTTP call (run it in a thread): status, headers, body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, dict(response.headers), response.read()


def png(seed: int, size: tuple[int, int]) -> bytes:
    """A generated test picture of ``size`` as PNG bytes, the same for the same ``seed``."""
    out = io.BytesIO()
    make_test_image(seed, size).save(out, format="PNG")
    return out.getvalue()


def generate_request(image: bytes | None, text: str, max_new_tokens: int) -> gateway_pb2.GenerateRequest:
    """One user message: ``image`` (when given), then ``text``."""
    parts = [gateway_pb2.Part(text=text)]
    if image is not None:
        parts.insert(0, gateway_pb2.Part(image=gateway_pb2.ImageSource(data=image)))
    message = gateway_pb2.ChatMessage(role=common_pb2.ROLE_USER, parts=parts)
    sampling = common_pb2.SamplingParams(max_new_tokens=max_new_tokens)
    return gateway_pb2.GenerateRequest(messages=[message], sampling=sampling)


@dataclass
class Observed:
    """The running system and where to look at it."""

    vision: VisionApp
    llm: LanguageApp
    gateway: GatewayApp
    stub: gateway_pb2_grpc.GatewayServiceStub
    http_base: str
    metrics_urls: dict[str, str]
    spans: InMemorySpanExporter
    model: str

    async def scrape(self, service: str) -> Scrape:
        _, _, body = await asyncio.to_thread(http, "GET", self.metrics_urls[service])
        return parse(body.decode())

    async def scrape_all(self) -> dict[str, Scrape]:
        return {service: await self.scrape(service) for service in self.metrics_urls}


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def observed(checkpoint, redis_server: LocalRedis) -> AsyncIterator[Observed]:  # type: ignore[no-untyped-def]
    path, prefix = str(checkpoint("llava")), f"obs{uuid.uuid4().hex[:8]}"
    spans = InMemorySpanExporter()
    common = {"redis_url": redis_server.url, "cache_prefix": prefix, "port": 0, "grace_seconds": 1.0}
    ports = {"vision": free_port(), "llm": free_port()}
    vision = VisionApp(
        VisionConfig(model=path, metrics_port=ports["vision"], **common),
        tracing=Tracing.to_exporter("tandem-vision", spans),
    )
    llm = LanguageApp(
        LlmConfig(model=path, device="cpu", metrics_port=ports["llm"], **common),
        tracing=Tracing.to_exporter("tandem-llm", spans),
    )
    async with contextlib.AsyncExitStack() as exits:
        vision_port = await vision.start()
        exits.push_async_callback(vision.stop)
        llm_port = await llm.start()
        exits.push_async_callback(llm.stop)
        gateway = GatewayApp(
            GatewayConfig(
                llm_addresses=(f"127.0.0.1:{llm_port}",),
                vision_addresses=(f"127.0.0.1:{vision_port}",),
                http_port=0,
                **common,
            ),
            tracing=Tracing.to_exporter("tandem-gateway", spans),
        )
        port = await gateway.start()
        exits.push_async_callback(gateway.stop)
        channel = aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(64 << 20))
        exits.push_async_callback(channel.close)
        assert gateway.http is not None
        http_base = f"http://127.0.0.1:{gateway.http.port}"
        urls = {
            "gateway": f"{http_base}/metrics",
            **{name: f"http://127.0.0.1:{p}/metrics" for name, p in ports.items()},
        }
        model = gateway.gateway.model_info().model  # the id OpenAI requests name
        yield Observed(
            vision, llm, gateway, gateway_pb2_grpc.GatewayServiceStub(channel), http_base, urls, spans, model
        )


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record at DEBUG and up, each with its ``request_id`` (as the services' handler adds)."""
    caplog.set_level("DEBUG")
    request_ids = RequestIdFilter()
    caplog.handler.addFilter(request_ids)
    try:
        yield caplog
    finally:
        caplog.handler.removeFilter(request_ids)
