"""The real gateway (gRPC server, real Redis) in front of the fake services, and its call helpers.

``start_fake_system`` starts one ``FakeVision``, ``replicas`` ``FakeLanguage`` servers and a
``GatewayApp`` on port 0, registering every stop on the caller's exit stack; the gateway
fixture ``start_system`` (tests/system/gateway/conftest.py) wraps it. The helpers build
``vlm.v1`` gateway requests and read their streamed answers and statuses.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from grpc import StatusCode, aio
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, llm_pb2_grpc, vision_pb2_grpc

from gateway.app import GatewayApp
from gateway.config import GatewayConfig
from tandem.serving.bootstrap import GrpcServer
from tests.support.fake_services import FakeLanguage, FakeVision, serve_fake

PNG_A = b"\x89PNG\r\n\x1a\nimage-a"
PNG_B = b"\x89PNG\r\n\x1a\nimage-b"


@dataclass
class FakeResolver:
    """DNS for the gateway's ``dns:///`` addresses: ``answers[host]`` is what ``host`` resolves
    to; a host without an answer fails as an unknown name does."""

    answers: dict[str, list[str]] = field(default_factory=dict)
    calls: int = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not known")
        return list(self.answers[host])


@dataclass
class System:
    """The gateway, its fakes (``servers[0]`` is the vision one) and a stub of the gateway."""

    vision: FakeVision
    llms: list[FakeLanguage]
    app: GatewayApp
    stub: gateway_pb2_grpc.GatewayServiceStub
    channel: aio.Channel
    servers: list[GrpcServer]
    resolver: FakeResolver

    @property
    def llm(self) -> FakeLanguage:
        return self.llms[0]


StartSystem = Callable[..., Awaitable[System]]


async def start_fake_system(
    exits: contextlib.AsyncExitStack,
    redis_url: str,
    replicas: int = 1,
    is_vlm: bool = True,
    token: str | None = None,
    dns_name: str = "",
    **cfg: Any,
) -> System:
    """Fakes + gateway; ``token`` guards the fakes, ``cfg`` goes to ``GatewayConfig``.

    With ``dns_name`` the language replicas share one port, replica ``i`` listening on
    127.0.0.{i + 1}, and the gateway gets ``dns:///{dns_name}:{port}``, resolved by the
    system's ``resolver``, which answers every replica's address until a test changes it."""

    async def fake(servicer: Any, add: Callable[[Any, aio.Server], None], **where: Any) -> GrpcServer:
        server = await serve_fake(servicer, add, token=token, **where)
        exits.push_async_callback(server.drain)
        return server

    vision = FakeVision()
    llms = [FakeLanguage(name=f"llm{i}", is_vlm=is_vlm) for i in range(replicas)]
    servers = [await fake(vision, vision_pb2_grpc.add_VisionServiceServicer_to_server)]
    for i, llm in enumerate(llms):
        where = {"host": f"127.0.0.{i + 1}", "port": servers[1].port if i else 0} if dns_name else {}
        servers.append(await fake(llm, llm_pb2_grpc.add_LanguageServiceServicer_to_server, **where))
    llm_addresses = tuple(f"127.0.0.1:{s.port}" for s in servers[1:])
    if dns_name:
        llm_addresses = (f"dns:///{dns_name}:{servers[1].port}",)
    config = GatewayConfig(
        vision_addresses=(f"127.0.0.1:{servers[0].port}",) if is_vlm else (),
        llm_addresses=llm_addresses,
        redis_url=redis_url,
        cache_prefix=f"t{uuid.uuid4().hex[:8]}",
        port=0,
        grace_seconds=0,
        **cfg,
    )
    resolver = FakeResolver({dns_name: [f"127.0.0.{i + 1}" for i in range(replicas)]} if dns_name else {})
    app = GatewayApp(config, resolve=resolver)
    exits.push_async_callback(app.stop)
    port = await app.start()
    channel = await exits.enter_async_context(aio.insecure_channel(f"127.0.0.1:{port}"))
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    return System(vision, llms, app, stub, channel, servers, resolver)


def user(*parts: gateway_pb2.Part) -> gateway_pb2.ChatMessage:
    return gateway_pb2.ChatMessage(role=common_pb2.ROLE_USER, parts=list(parts))


def text(value: str) -> gateway_pb2.Part:
    return gateway_pb2.Part(text=value)


def image(**source: Any) -> gateway_pb2.Part:
    return gateway_pb2.Part(image=gateway_pb2.ImageSource(**source))


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


async def collect(call: Any) -> list[Any]:
    return [response async for response in call]


async def status_of(call: Any) -> tuple[StatusCode, str]:
    """The status and details a call fails with (the test fails if it succeeds)."""
    with pytest.raises(aio.AioRpcError) as failed:
        await collect(call)
    return failed.value.code(), failed.value.details() or ""


def answer_of(responses: list[Any]) -> str:
    return "".join(r.text for r in responses)


async def chat(system: System, session_id: str, *parts: gateway_pb2.Part, request_id: str = "") -> list[Any]:
    request = gateway_pb2.ChatRequest(session_id=session_id, parts=list(parts), request_id=request_id)
    return await collect(system.stub.Chat(request, timeout=10))


async def new_session(system: System, prompt: str = "") -> str:
    response = await system.stub.CreateSession(gateway_pb2.CreateSessionRequest(system_prompt=prompt))
    return str(response.session.session_id)
