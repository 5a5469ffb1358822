"""The sync and async pipelines against a fake GatewayService on a real grpc.aio server (port 0).

The fake records what it receives and answers with a description of the request, so these tests
check the client's side of the contract (batching, streaming, sessions, metadata, error mapping)
without the model services.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc import aio
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from tandem.client import (
    AsyncPipeline,
    DeadlineExceeded,
    GenerationConfig,
    InvalidArgument,
    NotFound,
    Pipeline,
    ResourceExhausted,
    Response,
    Unauthenticated,
    Unavailable,
    pipeline,
)
from tandem.client.loop_thread import LoopThread
from tests.support.tls import needs_openssl, self_signed
from tests.support.waiting import eventually

_CODES = {"overload": grpc.StatusCode.RESOURCE_EXHAUSTED, "bad": grpc.StatusCode.INVALID_ARGUMENT}


def _text_of(parts: list[gateway_pb2.Part]) -> str:
    return " ".join(p.text for p in parts if p.WhichOneof("kind") == "text")


@dataclass
class FakeGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Answers ``echo: <last user text>`` in two chunks; ``sleep <s>`` delays, ``fail <kind>`` aborts;
    after the final chunk ``hold`` keeps the call open until ``released``, ``late`` fails it."""

    requests: list[gateway_pb2.GenerateRequest] = field(default_factory=list)
    released: bool = False
    ended: list[str] = field(default_factory=list)  # how each held or late call ended
    metadata: list[dict[str, str]] = field(default_factory=list)
    sessions: dict[str, list[gateway_pb2.HistoryMessage]] = field(default_factory=dict)

    async def _answer(self, text: str, images: int, context: aio.ServicerContext) -> AsyncIterator[dict]:
        self.metadata.append(dict(context.invocation_metadata() or ()))
        words = text.split()
        if words[:1] == ["fail"]:
            await context.abort(_CODES[words[1]], f"fake failure {words[1]}")
        if words[:1] == ["sleep"]:
            await asyncio.sleep(float(words[1]))
        yield {"text": "echo: ", "token_ids": [1], "image_ids": [f"img{i}" for i in range(images)]}
        usage = common_pb2.Usage(prompt_tokens=5, image_tokens=images, completion_tokens=2)
        yield {"text": text, "token_ids": [2], "finish_reason": common_pb2.FINISH_REASON_STOP, "usage": usage}
        try:
            while words[:1] == ["hold"] and not self.released:
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.ended.append("CANCELLED")
            raise
        if words[:1] == ["late"]:
            self.ended.append("INTERNAL")
            await context.abort(grpc.StatusCode.INTERNAL, "commit failed")
        if words[:1] == ["hold"]:
            self.ended.append("OK")

    async def Generate(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        last = request.messages[-1]
        images = sum(p.WhichOneof("kind") == "image" for m in request.messages for p in m.parts)
        async for fields in self._answer(_text_of(list(last.parts)), images, context):
            yield gateway_pb2.GenerateResponse(**fields)

    async def CreateSession(self, request, context):  # type: ignore[no-untyped-def]
        sid = uuid.uuid4().hex
        self.sessions[sid] = []
        return gateway_pb2.CreateSessionResponse(session=gateway_pb2.Session(session_id=sid))

    async def _session(self, sid: str, context: aio.ServicerContext) -> list[gateway_pb2.HistoryMessage]:
        if sid not in self.sessions:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"session {sid} not found")
        return self.sessions[sid]

    async def Chat(self, request, context):  # type: ignore[no-untyped-def]
        history = await self._session(request.session_id, context)
        text = _text_of(list(request.parts))
        answer = ""
        async for fields in self._answer(text, 0, context):
            answer += fields["text"]
            if "finish_reason" in fields:  # saved before the final chunk goes out, as the gateway does
                for role, content in ((common_pb2.ROLE_USER, text), (common_pb2.ROLE_ASSISTANT, answer)):
                    parts = [gateway_pb2.HistoryPart(text=content)]
                    history.append(gateway_pb2.HistoryMessage(role=role, parts=parts))
            yield gateway_pb2.ChatResponse(**fields)

    async def GetSession(self, request, context):  # type: ignore[no-untyped-def]
        history = await self._session(request.session_id, context)
        session = gateway_pb2.Session(session_id=request.session_id, messages=history, ttl_seconds=60)
        return gateway_pb2.GetSessionResponse(session=session)

    async def ListSessions(self, request, context):  # type: ignore[no-untyped-def]
        ids = sorted(self.sessions)
        start = int(request.page_token or 0)
        page = ids[start : start + 1]
        token = str(start + 1) if start + 1 < len(ids) else ""
        sessions = [gateway_pb2.Session(session_id=s) for s in page]
        return gateway_pb2.ListSessionsResponse(sessions=sessions, next_page_token=token)

    async def DeleteSession(self, request, context):  # type: ignore[no-untyped-def]
        await self._session(request.session_id, context)
        del self.sessions[request.session_id]
        return gateway_pb2.DeleteSessionResponse()

    async def GetModelInfo(self, request, context):  # type: ignore[no-untyped-def]
        info = common_pb2.ModelInfo(model="fake", architecture="LlavaForConditionalGeneration", is_vlm=True)
        return gateway_pb2.GetModelInfoResponse(info=info)


@dataclass
class Served:
    fake: FakeGateway
    address: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The fake on its own event loop thread, so blocking sync clients cannot stall it."""
    loop = LoopThread("fake-gateway")
    fake = FakeGateway()

    async def start() -> tuple[aio.Server, int]:
        server = aio.server()
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = loop.run(start())
    try:
        yield Served(fake, f"127.0.0.1:{port}")
    finally:
        loop.run(server.stop(None))
        loop.stop()


@pytest.fixture
def pipe(served: Served) -> Iterator[Pipeline]:
    with pipeline(served.address, token="s3cret") as client:
        yield client


def test_single_prompt_and_token_metadata(pipe: Pipeline, served: Served) -> None:
    response = pipe(("describe", b"\x89PNG fake"))
    assert response.text == "echo: describe"
    assert response.finish_reason == "stop"
    assert response.image_ids == ["img0"] and response.token_ids == [1, 2]
    assert response.usage is not None and response.usage.image_tokens == 1
    assert response.generate_token_len == 2 and response.input_token_len == 5
    assert served.fake.metadata[-1]["authorization"] == "Bearer s3cret"


def test_batch_answers_keep_prompt_order_while_running_concurrently(pipe: Pipeline) -> None:
    prompts = ["sleep 0.3", "sleep 0.2", "sleep 0.1", "sleep 0"]
    start = time.monotonic()
    answers = pipe(prompts)
    elapsed = time.monotonic() - start
    assert [a.text for a in answers] == [f"echo: {p}" for p in prompts]
    assert [a.index for a in answers] == [0, 1, 2, 3]
    assert elapsed < 0.55  # sequential would take >= 0.6 s


def test_per_prompt_gen_configs(pipe: Pipeline, served: Served) -> None:
    configs = [GenerationConfig(max_new_tokens=3), GenerationConfig(max_new_tokens=4)]
    pipe(["a", "b"], gen_config=configs)
    sent = {r.messages[0].parts[0].text: r.sampling.max_new_tokens for r in served.fake.requests[-2:]}
    assert sent == {"a": 3, "b": 4}
    with pytest.raises(InvalidArgument, match="2 gen_configs for 3 prompts"):
        pipe(["a", "b", "c"], gen_config=configs)


def test_stream_infer_yields_chunks(pipe: Pipeline) -> None:
    chunks = list(pipe.stream_infer("hello"))
    assert [c.text for c in chunks] == ["echo: ", "hello"]
    assert chunks[0].finish_reason is None and chunks[-1].finish_reason == "stop"


def test_stream_infer_batch_tags_chunks_by_index(pipe: Pipeline) -> None:
    chunks = list(pipe.stream_infer(["sleep 0.1", "fast"]))
    by_index = {i: "".join(c.text for c in chunks if c.index == i) for i in (0, 1)}
    assert by_index == {0: "echo: sleep 0.1", 1: "echo: fast"}


def test_leaving_a_stream_early_cancels_it(pipe: Pipeline) -> None:
    stream = pipe.stream_infer("sleep 0")
    first = next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert first.text == "echo: "
    assert pipe("still works").text == "echo: still works"


def test_three_turn_chat_and_history(pipe: Pipeline) -> None:
    sess = pipe.chat("one")
    assert sess.response is not None and sess.response.text == "echo: one"
    assert sess.response.session_id == sess.session_id
    sess = pipe.chat("two", session=sess)
    again = pipe.chat("three", session=sess.session_id)
    assert again.session_id == sess.session_id
    assert [m.text for m in sess.history] == ["one", "echo: one", "two", "echo: two", "three", "echo: three"]
    assert [m.role for m in sess.history[:2]] == ["user", "assistant"]
    sess.close()
    with pytest.raises(NotFound, match="not found") as info:
        pipe.chat("four", session=sess)
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_list_sessions_follows_pages(pipe: Pipeline) -> None:
    made = {pipe.create_session().session_id for _ in range(3)}
    listed = {s.session_id for s in pipe.list_sessions()}
    assert made <= listed


def test_typed_errors(pipe: Pipeline) -> None:
    with pytest.raises(ResourceExhausted, match="fake failure overload"):
        pipe("fail overload")
    with pytest.raises(InvalidArgument):
        pipe(["ok", "fail bad"])
    with pytest.raises(DeadlineExceeded):
        pipe("sleep 2", timeout=0.2)
    with pytest.raises(NotFound):
        pipe.end_session("nope")
    assert pipe.model_info().architecture == "LlavaForConditionalGeneration"


def test_unreachable_gateway_is_unavailable() -> None:
    with pipeline("127.0.0.1:1", timeout=2) as client, pytest.raises((Unavailable, DeadlineExceeded)):
        client("hi")


def test_closed_pipeline_refuses_calls(served: Served) -> None:
    client = pipeline(served.address)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client("hi")


async def test_async_pipeline(served: Served) -> None:
    async with AsyncPipeline(served.address) as apipe:
        assert (await apipe("hi")).text == "echo: hi"
        answers = await apipe(["a", "b"])
        assert [a.text for a in answers] == ["echo: a", "echo: b"]  # type: ignore[union-attr]
        texts = [chunk.text async for chunk in apipe.stream_infer("x")]
        assert texts == ["echo: ", "x"]
        sess = await apipe.chat("one")
        sess = await sess.chat("two")
        assert sess.response is not None and sess.response.text == "echo: two"
        assert len(await sess.get_history()) == 4
        await sess.close()
        with pytest.raises(NotFound):
            await sess.get_history()


async def test_a_stream_ends_at_its_final_chunk_without_waiting_for_the_status(served: Served) -> None:
    """The gateway holds the call open after the final chunk: the stream is over all the same,
    and the call is not cancelled: it ends OK once the gateway lets it."""
    served.fake.released, served.fake.ended = False, []
    async with AsyncPipeline(served.address) as apipe:
        chunks = await asyncio.wait_for(_chunks(apipe.stream_infer("hold on")), 20)
        assert [c.text for c in chunks] == ["echo: ", "hold on"] and chunks[-1].finish_reason == "stop"
        assert served.fake.ended == []
        served.fake.released = True
        await eventually(lambda: served.fake.ended)
    assert served.fake.ended == ["OK"]


async def test_a_failure_after_the_final_chunk_is_logged(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    served.fake.ended = []
    async with AsyncPipeline(served.address) as apipe:
        answer = await apipe("late")
        assert answer.text == "echo: late" and answer.finish_reason == "stop"
        logged = "then ended the call with INTERNAL: commit failed"
        await eventually(lambda: any(logged in r.getMessage() for r in caplog.records))
    assert served.fake.ended == ["INTERNAL"]


async def test_closing_right_after_an_answer_lets_its_status_arrive(served: Served) -> None:
    """close() gives the status of a whole answer a moment instead of cancelling its call."""
    served.fake.released, served.fake.ended = False, []
    apipe = AsyncPipeline(served.address)
    chunks = await asyncio.wait_for(_chunks(apipe.stream_infer("hold on")), 20)
    assert chunks[-1].finish_reason == "stop"
    closing = asyncio.ensure_future(apipe.close())
    await asyncio.sleep(0.1)
    assert not closing.done(), "close() did not wait for the answered call's status"
    served.fake.released = True
    await asyncio.wait_for(closing, 10)
    assert served.fake.ended == ["OK"]


async def _chunks(stream: AsyncIterator[Response]) -> list[Response]:
    return [chunk async for chunk in stream]


def test_auth_failure_is_unauthenticated() -> None:
    loop = LoopThread("auth-gateway")

    async def start() -> tuple[aio.Server, int]:
        from tandem.serving.auth import AuthInterceptor

        server = aio.server(interceptors=[AuthInterceptor("right")])
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(FakeGateway(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = loop.run(start())
    try:
        with pipeline(f"127.0.0.1:{port}", token="wrong") as client, pytest.raises(Unauthenticated):
            client("hi")
        with pipeline(f"127.0.0.1:{port}", token="right") as client:
            assert client("hi").text == "echo: hi"
    finally:
        loop.run(server.stop(None))
        loop.stop()


@needs_openssl
def test_tls_with_a_private_root(tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path)
    loop = LoopThread("tls-gateway")

    async def start() -> tuple[aio.Server, int]:
        server = aio.server()
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(FakeGateway(), server)
        credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        return server, port

    server, port = loop.run(start())
    try:
        with pipeline(f"localhost:{port}", root_certificates=cert, timeout=10) as client:
            assert client("over tls").text == "echo: over tls"
        with pipeline(f"localhost:{port}", timeout=3) as plaintext, pytest.raises(Unavailable):
            plaintext("hi")
    finally:
        loop.run(server.stop(None))
        loop.stop()
