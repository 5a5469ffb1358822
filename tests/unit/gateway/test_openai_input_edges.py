"""HTTP bodies the wire cannot carry are a 400 naming the parameter, never a 500.

Issue 11, finding 10: a lone surrogate (JSON ``"\\ud800"``) in any text, or a
``stop_token_ids`` entry beyond the proto's uint32, got through validation and failed later,
when the gateway built the downstream protobuf (500). The fake gateway here does exactly that
build, so what it accepts the real downstream call would accept too.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest

from gateway import convert
from gateway.messages import Chunk, Message, ModelInfo, Part, Sampling, Usage
from gateway.openai_http import HttpOptions, OpenAIHttpServer
from gateway.openai_request import InvalidRequest, parse_chat_completion

MODEL = "tiny"
LONE = "\ud800"


class ProtoBuildingGateway:
    """Builds the language service's protos from what it is given, then answers "ok"."""

    def model_info(self) -> ModelInfo:
        return ModelInfo(MODEL, "LlamaForCausalLM", False, "f" * 32, 1024)

    async def generate(
        self, messages: Sequence[Message], sampling: Sampling, *rest: Any
    ) -> AsyncGenerator[Chunk, None]:
        for message in messages:
            convert.message_to_pb(message).SerializeToString()
        convert.sampling_to_pb(sampling).SerializeToString()
        yield Chunk("ok", (1,), "stop", Usage(prompt_tokens=3, image_tokens=0, completion_tokens=1))

    async def chat(
        self, session_id: str, parts: Sequence[Part], sampling: Sampling, *rest: Any
    ) -> AsyncGenerator[Chunk, None]:
        async for chunk in self.generate([Message("user", tuple(parts))], sampling):
            yield chunk


@pytest.fixture
async def base() -> AsyncIterator[str]:
    server = OpenAIHttpServer(ProtoBuildingGateway(), HttpOptions(port=0))  # type: ignore[arg-type]
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def _user(content: Any) -> dict[str, Any]:
    return _body(messages=[{"role": "user", "content": content}])


HOSTILE: list[tuple[dict[str, Any], str]] = [
    (_user(f"a{LONE}b"), "messages[0]"),
    (_user([{"type": "text", "text": f"x{LONE}"}]), "messages[0].content[0]"),
    (
        _user([{"type": "image_url", "image_url": {"url": f"https://example.com/{LONE}.png"}}]),
        "messages[0].content[0]",
    ),
    (_body(stop=[f"end{LONE}"]), "stop"),
    (_body(session_id=f"s{LONE}"), "session_id"),
    (_body(model=f"tiny{LONE}"), "model"),
    (_body(stop_token_ids=[2**32]), "stop_token_ids"),
    (_body(stop_token_ids=[2**64]), "stop_token_ids"),
    (_body(stop_token_ids=[-1]), "stop_token_ids"),
    (_body(stop_token_ids=[True]), "stop_token_ids"),
]


@pytest.mark.parametrize(("body", "param"), HOSTILE)
def test_unencodable_input_is_refused_naming_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_completion(body)
    assert info.value.param == param


@pytest.mark.parametrize(("body", "param"), HOSTILE[:2] + HOSTILE[3:4] + HOSTILE[6:8])
async def test_the_http_answer_is_a_400(base: str, body: dict[str, Any], param: str) -> None:
    raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as the escape "\ud800"
    headers = {"content-type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/chat/completions", data=raw, headers=headers) as r,
    ):
        assert r.status == 400, await r.text()
        error = (await r.json())["error"]
        assert error["param"] == param


async def test_paired_surrogates_and_large_valid_ids_still_work(base: str) -> None:
    body = _body(stop_token_ids=[0, 2**32 - 1], stop=["\U0001f600"])
    body["messages"][0]["content"] = "smile \U0001f600"
    raw = json.dumps(body).encode()  # the emoji travels as the pair "\ud83d\ude00"
    headers = {"content-type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/v1/chat/completions", data=raw, headers=headers) as r,
    ):
        assert r.status == 200, await r.text()


def test_sampling_round_trips_through_the_proto_with_ignore_eos() -> None:
    sampling = Sampling(max_new_tokens=4, stop_token_ids=(7,), ignore_eos=True)
    assert convert.sampling_from_pb(convert.sampling_to_pb(sampling)) == sampling
    assert convert.sampling_to_pb(Sampling()).ignore_eos is False
