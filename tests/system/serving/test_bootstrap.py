"""The shared server bootstrap on a real grpc.aio server: error mapping, auth, health, sizes,
TLS, reflection, the readiness gate and run_until_signal. ServiceApp's lifecycle on top of it is
in test_service_app.py."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from vlm.v1 import gateway_pb2, gateway_pb2_grpc

from tandem import errors
from tandem.serving.bootstrap import GrpcServer, channel_options, run_until_signal
from tandem.serving.config import ServerConfig
from tandem.serving.interceptor import status_for
from tandem.serving.readiness import Readiness
from tests.support.bootstrap_servicer import RAISES, SERVICE, health_status, register
from tests.support.tls import needs_openssl, self_signed

EXPECTED: dict[str, tuple[grpc.StatusCode, str]] = {
    "invalid": (grpc.StatusCode.INVALID_ARGUMENT, "image is not a PNG, JPEG, WebP, GIF or BMP file"),
    "not_found": (grpc.StatusCode.NOT_FOUND, "session 'abc' does not exist"),
    "overloaded": (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests in flight; retry later"),
    "unavailable": (grpc.StatusCode.UNAVAILABLE, "the server is draining"),
    "deadline": (grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while encoding"),
    "conflict": (grpc.StatusCode.ABORTED, "another turn of this session is running"),
    "unauthenticated": (grpc.StatusCode.UNAUTHENTICATED, "bad token"),
    "timeout": (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"),
    "bug": (grpc.StatusCode.INTERNAL, errors.GENERIC_INTERNAL_MESSAGE),
    "key": (grpc.StatusCode.INTERNAL, errors.GENERIC_INTERNAL_MESSAGE),
    "empty_domain": (grpc.StatusCode.NOT_FOUND, "not_found"),
}

LEAK = re.compile(r"Traceback|File \"|0x[0-9a-f]{4,}|internal\.example|<\w+ .* at |Error\(")

Started = Callable[..., Awaitable[tuple[GrpcServer, aio.Channel]]]


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    """Start a GrpcServer (port 0) with the test servicer; everything is stopped afterwards."""
    servers: list[GrpcServer] = []
    channels: list[aio.Channel] = []

    async def start(**options: object) -> tuple[GrpcServer, aio.Channel]:
        server = GrpcServer(ServerConfig(**options), [register], [SERVICE])  # type: ignore[arg-type]
        port = await server.start()
        servers.append(server)
        channel = aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(64 << 20))
        channels.append(channel)
        return server, channel

    try:
        yield start
    finally:
        for channel in channels:
            await channel.close(None)
        for server in servers:
            await server.drain()


def test_status_for_maps_the_vocabulary() -> None:
    for name, exc in RAISES.items():
        assert status_for(exc) == EXPECTED[name], name


@pytest.mark.parametrize("name", sorted(RAISES))
async def test_unary_errors_map_to_status_codes(started: Started, name: str) -> None:
    _, channel = await started(grace_seconds=0.5)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetSession(gateway_pb2.GetSessionRequest(session_id=name))
    assert (caught.value.code(), caught.value.details()) == EXPECTED[name]
    assert not LEAK.search(caught.value.details() or "")
    assert not LEAK.search(str(caught.value.debug_error_string()))


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("name", ["invalid", "overloaded", "bug"])
async def test_streaming_errors_map_to_status_codes(started: Started, name: str, when: str) -> None:
    _, channel = await started(grace_seconds=0.5)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    call = stub.Generate(gateway_pb2.GenerateRequest(request_id=f"{name}@{when}"))
    texts = []
    with pytest.raises(aio.AioRpcError) as caught:
        async for message in call:
            texts.append(message.text)
    assert texts == (["first"] if when == "after" else [])
    assert (caught.value.code(), caught.value.details()) == EXPECTED[name]
    assert not LEAK.search(caught.value.details() or "")


async def test_successful_calls_pass_through(started: Started) -> None:
    _, channel = await started()
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    reply = await stub.GetSession(gateway_pb2.GetSessionRequest(session_id="ok"))
    assert reply.session.session_id == "ok"
    texts = [m.text async for m in stub.Generate(gateway_pb2.GenerateRequest(request_id="ok"))]
    assert texts == ["a", "b", "c"]


async def test_unimplemented_method_stays_unimplemented(started: Started) -> None:
    _, channel = await started()
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ListSessions(gateway_pb2.ListSessionsRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_messages_over_4_mib_pass(started: Started) -> None:
    _, channel = await started()
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    big = "x" * (5 * 1024 * 1024)
    reply = await stub.GetSession(gateway_pb2.GetSessionRequest(session_id=big))
    assert len(reply.session.session_id) == len(big)


async def test_messages_over_the_configured_limit_are_refused(started: Started) -> None:
    _, channel = await started(max_message_bytes=4 * 1024 * 1024)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetSession(gateway_pb2.GetSessionRequest(session_id="x" * (5 * 1024 * 1024)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    "metadata", [None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)]
)
async def test_auth_refuses_missing_or_wrong_tokens(started: Started, metadata: object) -> None:
    _, channel = await started(auth_token=TOKEN)
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    with pytest.raises(aio.AioRpcError) as unary:
        await stub.GetSession(gateway_pb2.GetSessionRequest(session_id="ok"), metadata=metadata)
    assert unary.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in (unary.value.details() or "")
    with pytest.raises(aio.AioRpcError) as streaming:
        async for _ in stub.Generate(gateway_pb2.GenerateRequest(request_id="ok"), metadata=metadata):
            pytest.fail("a refused stream produced a message")
    assert streaming.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_auth_accepts_the_right_token_and_leaves_health_open(started: Started) -> None:
    server, channel = await started(auth_token=TOKEN)
    await server.set_serving()
    stub = gateway_pb2_grpc.GatewayServiceStub(channel)
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    reply = await stub.GetSession(gateway_pb2.GetSessionRequest(session_id="ok"), metadata=metadata)
    assert reply.session.session_id == "ok"
    texts = [
        m.text async for m in stub.Generate(gateway_pb2.GenerateRequest(request_id="ok"), metadata=metadata)
    ]
    assert texts == ["a", "b", "c"]
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.GetSession(gateway_pb2.GetSessionRequest(session_id="bug"), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.INTERNAL  # errors still mapped behind auth
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_lifecycle(started: Started) -> None:
    server, channel = await started(grace_seconds=2.0)
    assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    await server.set_serving()
    assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    assert await health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    stream = gateway_pb2_grpc.GatewayServiceStub(channel).Generate(
        gateway_pb2.GenerateRequest(request_id="ok@slow")
    )
    assert (await stream.read()).text == "a"  # a stream in flight keeps the server in its grace period
    draining = asyncio.ensure_future(server.drain())
    update = await asyncio.wait_for(watch.read(), timeout=2)
    assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(aio.AioRpcError) as refused:  # new calls are refused while draining
        await gateway_pb2_grpc.GatewayServiceStub(channel).GetSession(
            gateway_pb2.GetSessionRequest(session_id="x")
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [(await stream.read()).text for _ in range(2)] == ["b", "c"]  # the running stream finishes
    assert await stream.read() is aio.EOF  # type: ignore[attr-defined]
    assert await stream.code() == grpc.StatusCode.OK
    await asyncio.wait_for(draining, timeout=5)
    with pytest.raises(aio.AioRpcError) as caught:
        await health_status(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_port_file_and_reflection(started: Started, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    server, channel = await started(port_file=str(port_file))
    assert port_file.read_text() == str(server.port) and server.port > 0
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for reply in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in reply.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names
        break


async def test_reflection_can_be_turned_off(started: Started) -> None:
    _, channel = await started(reflection=False)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in stub.ServerReflectionInfo(requests()):
            pass
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_server_config_validation() -> None:
    for bad in ({"port": 70000}, {"max_message_bytes": 1024}, {"grace_seconds": -1}, {"tls_cert": "c.pem"}):
        with pytest.raises(ValueError):
            ServerConfig(**bad)  # type: ignore[arg-type]


async def test_run_until_signal_serves_then_drains_on_sigterm() -> None:
    server = GrpcServer(ServerConfig(grace_seconds=0.5), [register], [SERVICE])
    warmed = asyncio.Event()
    shut = asyncio.Event()

    async def warmup() -> None:
        warmed.set()

    async def shutdown() -> None:
        shut.set()

    task = asyncio.ensure_future(run_until_signal(server, warmup, shutdown))
    try:
        await asyncio.wait_for(warmed.wait(), timeout=5)
        channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        for _ in range(50):
            if await health_status(channel) == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.02)
        assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        await channel.close(None)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the loop's signal handler
        await asyncio.wait_for(task, timeout=5)
        assert shut.is_set()
    finally:
        if not task.done():
            task.cancel()
        await server.drain()


@needs_openssl
async def test_tls_listener(started: Started, tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path)
    server, plain = await started(tls_cert=str(cert), tls_key=str(key))
    with pytest.raises(aio.AioRpcError):  # plaintext is refused on a TLS listener
        await health_status(plain)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    async with aio.secure_channel(f"localhost:{server.port}", credentials) as secure:
        assert await health_status(secure) == health_pb2.HealthCheckResponse.NOT_SERVING
        reply = await gateway_pb2_grpc.GatewayServiceStub(secure).GetSession(
            gateway_pb2.GetSessionRequest(session_id="over tls")
        )
    assert reply.session.session_id == "over tls"


async def test_readiness_gate_holds_opens_and_closes_for_good() -> None:
    gate = Readiness([SERVICE])

    async def statuses() -> list[int]:
        checks = [gate.servicer.Check(health_pb2.HealthCheckRequest(service=n), None) for n in ("", SERVICE)]
        return [(await check).status for check in checks]

    await gate.hold()
    assert gate.state == "holding" and await statuses() == [health_pb2.HealthCheckResponse.NOT_SERVING] * 2
    await gate.open()
    assert gate.state == "serving" and await statuses() == [health_pb2.HealthCheckResponse.SERVING] * 2
    await gate.close()
    assert gate.state == "closed" and await statuses() == [health_pb2.HealthCheckResponse.NOT_SERVING] * 2
    await gate.open()  # a warm-up that ends during the drain
    assert gate.state == "closed" and await statuses() == [health_pb2.HealthCheckResponse.NOT_SERVING] * 2
