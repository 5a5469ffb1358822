"""The OpenAI HTTP layer over a fake ``Gateway``: request validation, error mapping, SSE framing,
errors after the stream started, and cancellation when the client goes away."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.deadline import Deadline
from gateway.messages import Chunk, ImageSource, Message, ModelInfo, Part, Sampling, Usage
from gateway.openai_http import HttpOptions, OpenAIHttpServer
from gateway.openai_request import InvalidRequest, parse_chat_completion
from gateway.service import Gateway
from tandem.errors import InvalidInput, NotFound, Overloaded, Unavailable
from tests.support.tls import needs_openssl, self_signed

MODEL = "/models/tiny-llava"


class FakeGateway:
    """Streams ``ab`` then ``c``; the last user text may pick a failure (``overload``, ``slow``...)."""

    def __init__(self) -> None:
        self.ready = True
        self.calls: list[tuple[tuple[Message, ...], Sampling]] = []
        self.cancelled = asyncio.Event()

    def model_info(self) -> ModelInfo:
        if not self.ready:
            raise Unavailable("the gateway is still starting; retry shortly")
        return ModelInfo(MODEL, "LlavaForConditionalGeneration", True, "f" * 32, 1024)

    async def generate(
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        request_id: str,
        deadline: Deadline,
        tenant: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        self.calls.append((tuple(messages), sampling))
        text = messages[-1].parts[-1]
        if text == "overload":
            raise Overloaded("too many requests in flight; retry later")
        if text == "bad image":
            raise InvalidInput("the image could not be decoded")
        yield Chunk("ab", (1, 2), image_ids=("i" * 64,))
        if text == "midstream":
            raise Unavailable("the language service went away")
        if text == "slow":
            try:
                await asyncio.sleep(30)
            finally:
                self.cancelled.set()
        yield Chunk("c", (3,), "length", Usage(prompt_tokens=7, image_tokens=0, completion_tokens=3))

    async def chat(
        self,
        session_id: str,
        parts: Sequence[Part],
        sampling: Sampling,
        request_id: str,
        deadline: Deadline,
        tenant: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        if session_id != "s" * 32:
            raise NotFound("unknown session id (it may have expired or been deleted); create a new session")
        async for chunk in self.generate([Message("user", tuple(parts))], sampling, request_id, deadline):
            yield chunk


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeGateway, str]]:
    fake = FakeGateway()
    server = OpenAIHttpServer(fake, HttpOptions(port=0, max_body_bytes=64 * 1024))  # type: ignore[arg-type]
    port = await server.start()
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


def _body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


async def _post(base: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/chat/completions", json=body, **kwargs) as r,
    ):
        raw = await r.read()
        return r.status, json.loads(raw) if r.content_type == "application/json" else raw.decode()


async def test_completion_json(served: tuple[FakeGateway, str]) -> None:
    fake, base = served
    status, body = await _post(base, _body("hi", max_completion_tokens=9, top_k=4, seed=3))
    assert status == 200
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "abc"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == 10 and body["model"] == MODEL
    sampling = fake.calls[-1][1]
    assert (sampling.max_new_tokens, sampling.top_k, sampling.seed, sampling.temperature) == (9, 4, 3, 1.0)
    assert sampling.ignore_eos is False


async def test_ignore_eos_is_passed_on(served: tuple[FakeGateway, str]) -> None:
    fake, base = served
    status, _ = await _post(base, _body("hi", max_tokens=5, ignore_eos=True))
    assert status == 200 and fake.calls[-1][1].ignore_eos is True


async def test_model_name_may_be_the_basename(served: tuple[FakeGateway, str]) -> None:
    status, _ = await _post(served[1], {**_body("hi"), "model": "tiny-llava"})
    assert status == 200


async def test_stream_framing(served: tuple[FakeGateway, str]) -> None:
    status, text = await _post(served[1], _body("hi", stream=True, stream_options={"include_usage": True}))
    events = [line[6:] for line in text.split("\n\n") if line]
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "abc"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_error_after_the_stream_started_is_an_sse_error(served: tuple[FakeGateway, str]) -> None:
    status, text = await _post(served[1], _body("midstream", stream=True))
    events = [line[6:] for line in text.split("\n\n") if line]
    assert status == 200 and "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "unavailable" and "went away" in error["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (_body("overload"), 429, "overloaded"),
        (_body("bad image"), 400, "invalid_value"),
        (_body("overload", stream=True), 429, "overloaded"),  # before any output: a real status
        ({**_body("hi"), "model": "other"}, 404, "model_not_found"),
        (_body("hi", session_id="0" * 32), 404, "not_found"),
        (_body("hi", n=3), 400, "invalid_value"),
        (_body("hi", tools=[{"type": "function"}]), 400, "invalid_value"),
        ({"model": MODEL}, 400, "invalid_value"),
        ({"model": MODEL, "messages": "x" * 70_000}, 413, "413"),
    ],
)
async def test_errors_are_openai_shaped(
    served: tuple[FakeGateway, str], body: dict[str, Any], status: int, code: str
) -> None:
    got, reply = await _post(served[1], body)
    assert (got, reply["error"]["code"]) == (status, code)
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in reply["error"]["message"]


async def test_session_turn_uses_only_the_last_user_message(served: tuple[FakeGateway, str]) -> None:
    fake, base = served
    messages = [
        {"role": "user", "content": "old"},
        {"role": "assistant", "content": "older answer"},
        {"role": "user", "content": "new"},
    ]
    status, body = await _post(
        base, {"model": MODEL, "messages": messages}, headers={"X-Tandem-Session": "s" * 32}
    )
    assert status == 200 and body["session_id"] == "s" * 32
    assert fake.calls[-1][0] == (Message("user", ("new",)),)


async def test_health_and_auth(served: tuple[FakeGateway, str]) -> None:
    fake, base = served
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as ok:
            assert ok.status == 200
        fake.ready = False
        async with http.get(f"{base}/healthz") as starting:
            assert starting.status == 503
        async with http.get(f"{base}/v1/models") as models:
            assert models.status == 503 and (await models.json())["error"]["code"] == "unavailable"
    server = OpenAIHttpServer(fake, HttpOptions(port=0, auth_token="t0k"))  # type: ignore[arg-type]
    port = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/v1/models") as refused:
                assert refused.status == 401
            async with http.get(f"http://127.0.0.1:{port}/healthz") as open_health:
                assert open_health.status == 503  # health stays open; not ready yet
    finally:
        await server.stop()


async def test_client_disconnect_cancels_the_generation(served: tuple[FakeGateway, str]) -> None:
    fake, base = served
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{base}/v1/chat/completions", json=_body("slow", stream=True))
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        response.close()
    await asyncio.wait_for(fake.cancelled.wait(), timeout=5)


def test_parse_messages_and_parts() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
    body = {
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": [image, {"type": "text", "text": "what?"}]},
            {"role": "assistant", "content": None},
        ],
        "stop": "END",
        "temperature": 0,
    }
    parsed = parse_chat_completion(body)
    assert parsed.messages[0] == Message("system", ("rules",))
    assert parsed.messages[1].parts == (ImageSource(url="data:image/png;base64,AAAA"), "what?")
    assert parsed.messages[2] == Message("assistant", ())
    assert parsed.sampling.stop == ("END",) and parsed.sampling.temperature == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"stop": ["a", 3]}, "stop"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"ignore_eos": 1}, "ignore_eos"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
    ],
)
def test_parse_refusals_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_completion({**_body("hi"), **body})
    assert info.value.param == param


def test_fake_matches_the_gateway_interface() -> None:
    for name in ("model_info", "generate", "chat"):
        assert callable(getattr(Gateway, name)) and callable(getattr(FakeGateway, name))


@needs_openssl
async def test_tls_listener(tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path)
    options = HttpOptions(port=0, tls_cert=str(cert), tls_key=str(key))
    server = OpenAIHttpServer(FakeGateway(), options)  # type: ignore[arg-type]
    port = await server.start()
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"https://localhost:{port}/healthz", ssl=trust) as r,
        ):
            assert r.status == 200
    finally:
        await server.stop()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/sessions"])
@pytest.mark.parametrize("raw", [b"{not json", b"[" * 20000 + b"]" * 20000])
async def test_malformed_or_deeply_nested_json_is_a_400(
    served: tuple[FakeGateway, str], path: str, raw: bytes
) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{served[1]}{path}", data=raw) as r:
        assert r.status == 400
        assert (await r.json())["error"]["message"] == "the request body is not valid JSON"
