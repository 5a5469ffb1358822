"""The gateway as a real gRPC server on real Redis, with small fake vision/language services.

The fakes are real ``grpc.aio`` servers on port 0 that record what reached them (Encode calls,
GenerateTokens requests, their deadlines and cancellations), so these tests check the wiring:
one Encode per request, history re-encoded by id, NOT_FOUND -> force_inline retry, session
affinity, fail-over, deadlines, cancellation, status mapping, and the session protocol
through the public API (TESTPLAN 1, 2, 3, 14, 22, 23, 24).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from vlm.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    llm_pb2,
    llm_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
)

from gateway.app import GatewayApp
from gateway.config import GatewayConfig
from gateway.routing import rendezvous_order
from tandem.redis_local import LocalRedis, free_port
from tandem.serving.bootstrap import GrpcServer
from tandem.serving.config import ServerConfig

PNG_A = b"\x89PNG\r\n\x1a\nimage-a"
PNG_B = b"\x89PNG\r\n\x1a\nimage-b"
SECRET = "db-7.internal.example:6379"
FINGERPRINT = "f" * 16


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FakeVision(vision_pb2_grpc.VisionServiceServicer):
    """Encodes to fixed 4-token refs; remembers bytes so image ids can be resolved later."""

    calls: list[vision_pb2.EncodeRequest] = field(default_factory=list)
    known: dict[str, bytes] = field(default_factory=dict)
    timeouts: list[float | None] = field(default_factory=list)
    delay: float = 0.0
    cancelled: int = 0

    async def Encode(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(request)
        self.timeouts.append(context.time_remaining())
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        out = vision_pb2.EncodeResponse()
        for image in request.images:
            if image.WhichOneof("source") == "data":
                image_id = sha(image.data)
                self.known[image_id] = image.data
            elif image.image_id in self.known:
                image_id = image.image_id
            else:
                await context.abort(grpc.StatusCode.NOT_FOUND, "unknown image id; send the image again")
            inline = b"inline" if request.force_inline else b""
            ref = common_pb2.ImageRef(image_id=image_id, num_tokens=4, inline_record=inline)
            out.images.add(ref=ref, cache_hit=False)
        return out

    async def GetVisionInfo(self, request, context):  # type: ignore[no-untyped-def]
        return vision_pb2.GetVisionInfoResponse(
            info=common_pb2.ModelInfo(fingerprint=FINGERPRINT, is_vlm=True)
        )


@dataclass
class FakeLanguage(llm_pb2_grpc.LanguageServiceServicer):
    """Answers "u<number of user messages>" in three chunks; scriptable failures and delays."""

    name: str = "llm"
    is_vlm: bool = True
    delay: float = 0.0
    chunks: int = 3
    evicted: set[str] = field(default_factory=set)
    fail: tuple[grpc.StatusCode, str] | None = None
    requests: list[llm_pb2.GenerateTokensRequest] = field(default_factory=list)
    timeouts: list[float | None] = field(default_factory=list)
    running: int = 0
    cancelled: int = 0

    async def GenerateTokens(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        self.timeouts.append(context.time_remaining())
        if self.fail is not None:
            await context.abort(*self.fail)
        refs = [p.image for m in request.messages for p in m.parts if p.WhichOneof("kind") == "image"]
        if any(r.image_id in self.evicted and not r.inline_record for r in refs):
            await context.abort(grpc.StatusCode.NOT_FOUND, "embedding not in the cache")
        users = sum(m.role == common_pb2.ROLE_USER for m in request.messages)
        self.running += 1
        try:
            for i in range(self.chunks):
                await asyncio.sleep(self.delay)
                yield llm_pb2.GenerateTokensResponse(text=f"u{users}" if i == 0 else ".", token_ids=[i])
            usage = common_pb2.Usage(
                prompt_tokens=10, image_tokens=4 * len(refs), completion_tokens=self.chunks
            )
            yield llm_pb2.GenerateTokensResponse(finish_reason=common_pb2.FINISH_REASON_STOP, usage=usage)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1

    async def GetLanguageInfo(self, request, context):  # type: ignore[no-untyped-def]
        info = common_pb2.ModelInfo(
            model="fake", architecture="Fake", is_vlm=self.is_vlm, fingerprint=FINGERPRINT
        )
        return llm_pb2.GetLanguageInfoResponse(info=info)


async def serve_fake(
    servicer: Any, add: Callable[[Any, aio.Server], None], port: int = 0, token: str | None = None
) -> GrpcServer:
    options = ServerConfig(port=port, grace_seconds=0, auth_token=token)
    server = GrpcServer(options, [lambda s: add(servicer, s)], ["fake"])
    await server.start()
    await server.set_serving()
    return server


@dataclass
class System:
    vision: FakeVision
    llms: list[FakeLanguage]
    app: GatewayApp
    stub: gateway_pb2_grpc.GatewayServiceStub
    channel: aio.Channel
    servers: list[GrpcServer]

    @property
    def llm(self) -> FakeLanguage:
        return self.llms[0]


StartSystem = Callable[..., Awaitable[System]]


@pytest.fixture
async def start_system(redis_server: LocalRedis) -> AsyncIterator[StartSystem]:
    """Start fakes + gateway; everything started is stopped at the end, even after a failure."""
    async with contextlib.AsyncExitStack() as exits:

        async def fake(
            servicer: Any, add: Callable[[Any, aio.Server], None], token: str | None
        ) -> GrpcServer:
            server = await serve_fake(servicer, add, token=token)
            exits.push_async_callback(server.drain)
            return server

        async def start(
            replicas: int = 1,
            is_vlm: bool = True,
            redis_url: str | None = None,
            token: str | None = None,
            **cfg: Any,
        ) -> System:
            vision = FakeVision()
            llms = [FakeLanguage(name=f"llm{i}", is_vlm=is_vlm) for i in range(replicas)]
            servers = [await fake(vision, vision_pb2_grpc.add_VisionServiceServicer_to_server, token)]
            for llm in llms:
                servers.append(await fake(llm, llm_pb2_grpc.add_LanguageServiceServicer_to_server, token))
            config = GatewayConfig(
                vision_addresses=(f"127.0.0.1:{servers[0].port}",) if is_vlm else (),
                llm_addresses=tuple(f"127.0.0.1:{s.port}" for s in servers[1:]),
                redis_url=redis_url or redis_server.url,
                cache_prefix=f"t{uuid.uuid4().hex[:8]}",
                port=0,
                grace_seconds=0,
                **cfg,
            )
            app = GatewayApp(config)
            exits.push_async_callback(app.stop)
            port = await app.start()
            channel = await exits.enter_async_context(aio.insecure_channel(f"127.0.0.1:{port}"))
            return System(vision, llms, app, gateway_pb2_grpc.GatewayServiceStub(channel), channel, servers)

        yield start


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


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
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


# --- one-off generation ----------------------------------------------------------------------


async def test_two_images_are_encoded_in_one_call_and_ids_returned(start_system: StartSystem) -> None:
    system = await start_system()
    request = gateway_pb2.GenerateRequest(
        messages=[user(image(data=PNG_A), text("compare"), image(url=data_uri(PNG_B)))]
    )
    responses = await collect(system.stub.Generate(request, timeout=5))
    assert answer_of(responses) == "u1.." and responses[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    assert list(responses[0].image_ids) == [sha(PNG_A), sha(PNG_B)]
    assert all(not r.image_ids for r in responses[1:])
    assert responses[-1].usage.image_tokens == 8
    (call,) = system.vision.calls
    assert [i.data for i in call.images] == [PNG_A, PNG_B] and not call.force_inline
    (sent,) = system.llm.requests
    kinds = [p.WhichOneof("kind") for p in sent.messages[0].parts]
    assert kinds == ["image", "text", "image"] and sent.session_id == ""
    assert sent.sampling.max_new_tokens == 256  # the gateway default fills 0
    assert 0 < (system.llm.timeouts[0] or 0) <= 5.1 and 0 < (system.vision.timeouts[0] or 0) <= 5.1


async def test_image_id_from_an_earlier_response_is_resolved(start_system: StartSystem) -> None:
    system = await start_system()
    first = await collect(
        system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(image(data=PNG_A))]))
    )
    image_id = first[0].image_ids[0]
    again = gateway_pb2.GenerateRequest(messages=[user(image(image_id=image_id), text("again"))])
    responses = await collect(system.stub.Generate(again))
    assert list(responses[0].image_ids) == [image_id]
    assert system.vision.calls[-1].images[0].image_id == image_id
    unknown = gateway_pb2.GenerateRequest(messages=[user(image(image_id="0" * 64))])
    assert (await status_of(system.stub.Generate(unknown)))[0] == grpc.StatusCode.NOT_FOUND


async def test_images_past_the_per_call_limit_are_split_in_order(start_system: StartSystem) -> None:
    system = await start_system(max_images_per_encode=2)
    pngs = [PNG_A, PNG_B, b"\x89PNG\r\n\x1a\nimage-c"]
    request = gateway_pb2.GenerateRequest(messages=[user(*[image(data=p) for p in pngs])])
    responses = await collect(system.stub.Generate(request))
    assert list(responses[0].image_ids) == [sha(p) for p in pngs]
    assert sorted(len(c.images) for c in system.vision.calls) == [1, 2]
    sent = [p.image.image_id for p in system.llm.requests[0].messages[0].parts]
    assert sent == [sha(p) for p in pngs]


async def test_requests_without_a_deadline_get_the_server_cap(start_system: StartSystem) -> None:
    system = await start_system(max_request_seconds=30)
    await collect(system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))])))
    assert 25 < (system.llm.timeouts[0] or 0) <= 30.2  # grpc rounds timeouts up slightly


async def test_evicted_embedding_is_reencoded_inline_once(start_system: StartSystem) -> None:
    system = await start_system()
    system.llm.evicted.add(sha(PNG_A))
    responses = await collect(
        system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(image(data=PNG_A))]))
    )
    assert answer_of(responses) == "u1.."
    assert [c.force_inline for c in system.vision.calls] == [False, True]
    assert len(system.llm.requests) == 2


async def test_text_only_model_refuses_images(start_system: StartSystem) -> None:
    system = await start_system(is_vlm=False)
    info = await system.stub.GetModelInfo(gateway_pb2.GetModelInfoRequest())
    assert not info.info.is_vlm and info.info.model == "fake"
    request = gateway_pb2.GenerateRequest(messages=[user(text("hi"), image(data=PNG_A))])
    code, message = await status_of(system.stub.Generate(request))
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT
        and message == "this model is text-only; remove the image parts"
    )
    ok = await collect(system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))])))
    assert answer_of(ok) == "u1.." and not system.vision.calls


STATUS_CASES = [
    ("bad base64", dict(url="data:image/png;base64,@@@"), None, grpc.StatusCode.INVALID_ARGUMENT, "base64"),
    (
        "blocked url",
        dict(url="http://127.0.0.1:1/x.png"),
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "non-public",
    ),
    ("file url", dict(url="file:///etc/passwd"), None, grpc.StatusCode.INVALID_ARGUMENT, "http or https"),
    (
        "llm invalid",
        dict(data=PNG_A),
        (grpc.StatusCode.INVALID_ARGUMENT, "prompt too long"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt too long",
    ),
    (
        "llm overload",
        dict(data=PNG_A),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full; retry later"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "queue full",
    ),
    (
        "llm bug",
        dict(data=PNG_A),
        (grpc.StatusCode.INTERNAL, SECRET),
        grpc.StatusCode.INTERNAL,
        "internal error",
    ),
    (
        "llm down",
        dict(data=PNG_A),
        (grpc.StatusCode.UNAVAILABLE, SECRET),
        grpc.StatusCode.UNAVAILABLE,
        "language service is unavailable",
    ),
]


@pytest.mark.parametrize(
    ("case", "source", "fail", "code", "message"), STATUS_CASES, ids=[c[0] for c in STATUS_CASES]
)
async def test_status_codes_and_safe_messages(
    start_system: StartSystem,
    case: str,
    source: dict[str, Any],
    fail: Any,
    code: grpc.StatusCode,
    message: str,
) -> None:
    system = await start_system()
    system.llm.fail = fail
    request = gateway_pb2.GenerateRequest(messages=[user(image(**source), text("hi"))])
    got, details = await status_of(system.stub.Generate(request, timeout=5))
    assert got == code and message in details
    assert SECRET not in details and "Traceback" not in details and "127.0.0.1" not in details


async def test_malformed_requests_are_invalid_argument(start_system: StartSystem) -> None:
    system = await start_system()
    bad = [
        gateway_pb2.GenerateRequest(),
        gateway_pb2.GenerateRequest(messages=[gateway_pb2.ChatMessage(parts=[text("no role")])]),
        gateway_pb2.GenerateRequest(messages=[user(gateway_pb2.Part())]),
        gateway_pb2.GenerateRequest(messages=[user(image())]),
        gateway_pb2.GenerateRequest(messages=[user(image(data=PNG_A))] * 9),
    ]
    for request in bad:
        assert (await status_of(system.stub.Generate(request)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert not system.llm.requests


# --- deadlines, cancellation, fail-over ------------------------------------------------------


async def _idle(llm: FakeLanguage, within: float = 2.0) -> bool:
    stop = time.monotonic() + within
    while llm.running and time.monotonic() < stop:
        await asyncio.sleep(0.02)
    return llm.running == 0


async def test_deadline_reaches_downstream_and_cancels_it(start_system: StartSystem) -> None:
    system = await start_system()
    system.llm.delay, system.llm.chunks = 0.2, 50
    started = time.monotonic()
    code, _ = await status_of(
        system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))]), timeout=0.6)
    )
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 2.5
    assert (system.llm.timeouts[0] or 99) <= 0.65
    assert await _idle(system.llm)


async def test_client_cancel_stops_the_language_stream(start_system: StartSystem) -> None:
    system = await start_system()
    system.llm.delay, system.llm.chunks = 0.05, 200
    call = system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))]))
    seen = 0
    async for _ in call:
        seen += 1
        if seen == 3:
            call.cancel()
            break
    assert await _idle(system.llm)
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


# --- sessions --------------------------------------------------------------------------------


async def test_three_turns_reuse_the_first_image_by_id(start_system: StartSystem) -> None:
    system = await start_system()
    sid = await new_session(system, "be brief")
    first = await chat(system, sid, image(data=PNG_A), text("what is it?"))
    assert list(first[0].image_ids) == [sha(PNG_A)] and answer_of(first) == "u1.."
    await chat(system, sid, text("and the colour?"))
    third = await chat(system, sid, image(image_id=sha(PNG_A)), text("look again"))
    assert answer_of(third) == "u3.."
    history = system.llm.requests[-1].messages
    assert [m.role for m in history] == [1, 2, 3, 2, 3, 2]
    refs = [p.image.image_id for m in history for p in m.parts if p.WhichOneof("kind") == "image"]
    assert refs == [sha(PNG_A), sha(PNG_A)]
    assert [i.image_id for i in system.vision.calls[-1].images] == [sha(PNG_A), sha(PNG_A)]  # one call
    session = (await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert len(session.messages) == 7 and session.messages[0].parts[0].text == "be brief"
    assert session.messages[1].parts[0].image_id == sha(PNG_A)
    assert session.messages[2].parts[0].text == "u1.."


async def test_retried_turn_is_replayed_not_duplicated(start_system: StartSystem) -> None:
    system = await start_system()
    sid = await new_session(system)
    first = await chat(system, sid, image(data=PNG_A), text("hi"), request_id="turn-1")
    again = await chat(system, sid, image(data=PNG_A), text("hi"), request_id="turn-1")
    assert len(again) == 1 and again[0].replayed and not first[0].replayed
    assert again[0].text == answer_of(first) and list(again[0].image_ids) == [sha(PNG_A)]
    assert again[0].finish_reason == common_pb2.FINISH_REASON_STOP and again[0].usage.completion_tokens == 3
    assert len(system.llm.requests) == 1
    session = (await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert len(session.messages) == 2


async def test_concurrent_turn_is_aborted_and_history_not_interleaved(start_system: StartSystem) -> None:
    system = await start_system()
    system.llm.delay = 0.1
    sid = await new_session(system)
    slow = asyncio.create_task(chat(system, sid, text("first")))
    await asyncio.sleep(0.15)
    code, details = await status_of(
        system.stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=[text("second")]))
    )
    assert code == grpc.StatusCode.ABORTED and "another turn of this session is in progress" in details
    await slow
    session = (await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert [m.parts[0].text for m in session.messages] == ["first", "u1.."]


async def test_failed_and_cancelled_turns_leave_the_session_as_it_was(start_system: StartSystem) -> None:
    system = await start_system()
    sid = await new_session(system)
    await chat(system, sid, text("one"))
    system.llm.fail = (grpc.StatusCode.INVALID_ARGUMENT, "prompt too long")
    code, _ = await status_of(system.stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=[text("two")])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    system.llm.fail, system.llm.delay, system.llm.chunks = None, 0.05, 100
    call = system.stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=[text("three")]))
    async for _ in call:
        call.cancel()
        break
    assert await _idle(system.llm)
    system.llm.delay, system.llm.chunks = 0.0, 3
    assert answer_of(await chat(system, sid, text("four"))) == "u2.."  # lock released, history intact
    session = (await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert [m.parts[0].text for m in session.messages] == ["one", "u1..", "four", "u2.."]


async def test_session_crud_and_not_found(start_system: StartSystem) -> None:
    system = await start_system()
    ids = [await new_session(system) for _ in range(3)]
    listed = await system.stub.ListSessions(gateway_pb2.ListSessionsRequest(page_size=2))
    rest = await system.stub.ListSessions(
        gateway_pb2.ListSessionsRequest(page_size=2, page_token=listed.next_page_token)
    )
    assert sorted(s.session_id for s in [*listed.sessions, *rest.sessions]) == sorted(ids)
    assert not rest.next_page_token
    await system.stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=ids[0]))
    for call in (
        system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=ids[0])),
        system.stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=ids[0])),
    ):
        with pytest.raises(aio.AioRpcError) as missing:
            await call
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    code, _ = await status_of(system.stub.Chat(gateway_pb2.ChatRequest(session_id="nope", parts=[text("x")])))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_session_survives_a_gateway_restart(
    start_system: StartSystem, redis_server: LocalRedis
) -> None:
    system = await start_system()
    sid = await new_session(system)
    await chat(system, sid, image(data=PNG_A), text("one"))
    await system.channel.close()
    await system.app.stop()
    app = GatewayApp(system.app.config)
    port = await app.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            request = gateway_pb2.ChatRequest(session_id=sid, parts=[text("two")])
            assert answer_of(await collect(stub.Chat(request))) == "u2.."
    finally:
        await app.stop()


async def test_turn_in_flight_at_shutdown_fails_cleanly_and_retries_once(start_system: StartSystem) -> None:
    system = await start_system()
    system.llm.delay, system.llm.chunks = 0.05, 100
    sid = await new_session(system)
    call = system.stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=[text("hi")], request_id="r1"))
    async for _ in call:
        break
    await system.app.stop()  # grace 0: the running turn is cut
    with pytest.raises(aio.AioRpcError):
        await collect(call)
    assert await _idle(system.llm)
    system.llm.delay, system.llm.chunks = 0.0, 3
    app = GatewayApp(system.app.config)
    port = await app.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            retry = gateway_pb2.ChatRequest(session_id=sid, parts=[text("hi")], request_id="r1")
            first = await collect(stub.Chat(retry))
            again = await collect(stub.Chat(retry))
            session = (await stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    finally:
        await app.stop()
    assert answer_of(first) == "u1.." and not first[0].replayed
    assert again[0].replayed and again[0].text == "u1.."
    assert [m.parts[0].text for m in session.messages] == ["hi", "u1.."]


async def test_session_store_down_is_unavailable_but_generate_works(start_system: StartSystem) -> None:
    system = await start_system(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(aio.AioRpcError) as down:
        await system.stub.CreateSession(gateway_pb2.CreateSessionRequest())
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "session store is unavailable" in (down.value.details() or "")
    assert answer_of(
        await collect(system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))])))
    )


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
