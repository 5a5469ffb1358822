"""Failures and the door of the real gateway over fake services: deadlines and cancellation
reach downstream, size limits refuse early, a dead replica fails over, auth guards every method,
health waits for downstream (TESTPLAN 3, 8, 14).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from vlm.v1 import gateway_pb2, gateway_pb2_grpc, llm_pb2_grpc

from gateway.app import GatewayApp
from gateway.config import GatewayConfig
from gateway.routing import rendezvous_order
from tandem.redis_local import LocalRedis, free_port
from tandem.serving.bootstrap import GrpcServer
from tests.support.fake_services import FakeLanguage, idle, serve_fake
from tests.support.fake_system import (
    PNG_A,
    StartSystem,
    answer_of,
    chat,
    collect,
    image,
    new_session,
    status_of,
    text,
    user,
)
from tests.support.streams import cancel_after


async def test_deadline_reaches_downstream_and_cancels_it(start_system: StartSystem) -> None:
    system = await start_system()
    system.llm.delay, system.llm.chunks = 0.2, 50
    started = time.monotonic()
    code, _ = await status_of(
        system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))]), timeout=0.6)
    )
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 2.5
    assert (system.llm.timeouts[0] or 99) <= 0.65
    assert await idle(system.llm)


async def test_client_cancel_stops_the_language_stream(start_system: StartSystem) -> None:
    system = await start_system()
    system.llm.delay, system.llm.chunks = 0.05, 200
    await cancel_after(system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))])), 3)
    assert await idle(system.llm)
    assert system.llm.cancelled == 1


async def test_client_cancel_during_encoding_stops_the_encoder(start_system: StartSystem) -> None:
    system = await start_system()
    system.vision.delay = 5.0
    call = system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(image(data=PNG_A))]))
    await asyncio.sleep(0.3)
    assert len(system.vision.calls) == 1
    call.cancel()
    for _ in range(100):
        if system.vision.cancelled:
            break
        await asyncio.sleep(0.02)
    assert system.vision.cancelled == 1 and not system.llm.requests


async def test_oversized_image_is_refused_before_any_downstream_call(start_system: StartSystem) -> None:
    system = await start_system(max_image_bytes=1024, max_request_bytes=2048)
    big = gateway_pb2.GenerateRequest(messages=[user(image(data=b"\x00" * 1025))])
    code, details = await status_of(system.stub.Generate(big))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "too large" in details
    several = gateway_pb2.GenerateRequest(messages=[user(*[image(data=bytes([i]) * 1000) for i in range(3)])])
    code, details = await status_of(system.stub.Generate(several))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "total more than 2048" in details
    assert not system.vision.calls and not system.llm.requests


async def test_unavailable_replica_fails_over_and_sessions_stick(start_system: StartSystem) -> None:
    system = await start_system(replicas=2)
    sid = await new_session(system)
    addresses = list(system.app.config.llm_addresses)
    preferred = addresses.index(rendezvous_order(sid, addresses)[0])
    for _ in range(3):
        await chat(system, sid, text("hi"))
    assert len(system.llms[preferred].requests) == 3 and not system.llms[1 - preferred].requests
    assert all(r.session_id == sid for r in system.llms[preferred].requests)
    await system.servers[1 + preferred].drain()  # the session's replica dies
    responses = await chat(system, sid, text("still there?"))
    assert answer_of(responses) == "u4.." and len(system.llms[1 - preferred].requests) == 1


async def test_auth_on_every_method_and_token_sent_downstream(start_system: StartSystem) -> None:
    system = await start_system(token="inner", auth_token="outer", downstream_auth_token="inner")
    request = gateway_pb2.GenerateRequest(messages=[user(image(data=PNG_A), text("hi"))])
    for metadata in (None, (("authorization", "Bearer inner"),)):
        code, _ = await status_of(system.stub.Generate(request, metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(aio.AioRpcError) as refused:
            await system.stub.CreateSession(gateway_pb2.CreateSessionRequest(), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ok = await collect(system.stub.Generate(request, metadata=(("authorization", "Bearer outer"),)))
    assert answer_of(ok) == "u1.." and len(system.vision.calls) == 1


async def test_health_is_not_serving_until_downstream_answers(redis_server: LocalRedis) -> None:
    llm_port = free_port()
    config = GatewayConfig(llm_addresses=(f"127.0.0.1:{llm_port}",), redis_url=redis_server.url, port=0)
    app = GatewayApp(config)
    port = await app.server.start()
    fake: GrpcServer | None = None
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            warm = asyncio.create_task(app.warmup())
            await asyncio.sleep(0.8)
            status = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING and not warm.done()
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            with pytest.raises(aio.AioRpcError) as early:
                await stub.GetModelInfo(gateway_pb2.GetModelInfoRequest())
            assert early.value.code() == grpc.StatusCode.UNAVAILABLE
            fake = await serve_fake(
                FakeLanguage(is_vlm=False), llm_pb2_grpc.add_LanguageServiceServicer_to_server, llm_port
            )
            await asyncio.wait_for(warm, 5)
            await app.server.set_serving()
            status = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.stop()
        if fake is not None:
            await fake.drain()


async def test_every_public_method_needs_the_token_and_reflection_is_off(start_system: StartSystem) -> None:
    """TESTPLAN 8: all seven methods refuse a missing or wrong token; health stays open;
    reflection is not served on the public listener unless configured."""
    system = await start_system(auth_token="outer")
    good = (("authorization", "Bearer outer"),)
    sid = str(
        (
            await system.stub.CreateSession(gateway_pb2.CreateSessionRequest(), metadata=good)
        ).session.session_id
    )
    message = user(text("hi"))
    calls: dict[str, Callable[[Any], Any]] = {
        "Generate": lambda md: collect(
            system.stub.Generate(gateway_pb2.GenerateRequest(messages=[message]), metadata=md)
        ),
        "CreateSession": lambda md: system.stub.CreateSession(
            gateway_pb2.CreateSessionRequest(), metadata=md
        ),
        "Chat": lambda md: collect(
            system.stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=[text("hi")]), metadata=md)
        ),
        "GetSession": lambda md: system.stub.GetSession(
            gateway_pb2.GetSessionRequest(session_id=sid), metadata=md
        ),
        "ListSessions": lambda md: system.stub.ListSessions(gateway_pb2.ListSessionsRequest(), metadata=md),
        "DeleteSession": lambda md: system.stub.DeleteSession(
            gateway_pb2.DeleteSessionRequest(session_id=sid), metadata=md
        ),
        "GetModelInfo": lambda md: system.stub.GetModelInfo(gateway_pb2.GetModelInfoRequest(), metadata=md),
    }
    assert set(calls) == set(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].methods_by_name)
    bad = [None, (("authorization", "Bearer wrong"),), (("authorization", "outer"),), (("x-token", "outer"),)]
    for name, call in calls.items():
        for metadata in bad:
            with pytest.raises(aio.AioRpcError) as refused:
                await call(metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, metadata)
    assert system.vision.calls == [] and system.llm.requests == []  # nothing got past the door
    for call in calls.values():  # the right token opens every method (DeleteSession last)
        await call(good)
    health = health_pb2_grpc.HealthStub(system.channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(system.channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    for metadata in (good, None):
        code, _ = await status_of(reflect.ServerReflectionInfo(iter([ask]), metadata=metadata))
        assert code == (grpc.StatusCode.UNIMPLEMENTED if metadata else grpc.StatusCode.UNAUTHENTICATED)
