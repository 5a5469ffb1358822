"""The official ``openai`` package, unchanged, against the gateway's OpenAI-compatible endpoint."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from PIL import Image

from tandem import GenerationConfig, Pipeline, pipeline
from tests.support.client_stack import TOKEN, Stack

pytestmark = pytest.mark.slow

MAX_TOKENS = 6
GREEDY = GenerationConfig(max_new_tokens=MAX_TOKENS)


def _data_url(color: str) -> str:
    buffer = io.BytesIO()
    image = Image.new("RGB", (40, 40), color)
    image.paste("white", (10, 10, 30, 20))
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


RED = _data_url("red")
GREEN = _data_url("green")


def _user(text: str, *urls: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": u, "detail": "auto"}} for u in urls
    ]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _http(method: str, url: str, body: bytes | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@pytest.fixture(scope="module")
def client(client_stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=client_stack.open.openai_base, api_key="unused", max_retries=0, timeout=60
    ) as c:
        yield c


@pytest.fixture(scope="module")
def pipe(client_stack: Stack) -> Iterator[Pipeline]:
    with pipeline(client_stack.open.grpc, gen_config=GREEDY, timeout=60) as p:
        yield p


def _ask(client: openai.OpenAI, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    params = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, **kwargs}
    return client.chat.completions.create(**params)


def test_models_and_a_text_completion(client: openai.OpenAI, client_stack: Stack) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [client_stack.model]
    reply = _ask(client, client_stack.model, [{"role": "user", "content": "Hello!"}])
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_image_by_data_url_gives_the_grpc_answer(
    client: openai.OpenAI, pipe: Pipeline, client_stack: Stack
) -> None:
    messages = _user("What is in the image?", RED)
    http_answer = _ask(client, client_stack.model, messages)
    grpc_answer = pipe(messages)  # the same OpenAI-format messages, through the Python client
    assert http_answer.choices[0].message.content == grpc_answer.text
    assert http_answer.usage.prompt_tokens == grpc_answer.usage.prompt_tokens  # type: ignore[union-attr]


def test_two_images(client: openai.OpenAI, pipe: Pipeline, client_stack: Stack) -> None:
    messages = _user("Compare them.", RED, GREEN)
    reply = _ask(client, client_stack.model, messages)
    assert reply.usage.prompt_tokens > 32  # two images of 16 tokens each, plus the text
    assert reply.choices[0].message.content == pipe(messages).text


def test_streaming_with_usage(client: openai.OpenAI, client_stack: Stack) -> None:
    messages = _user("Describe it.", GREEN)
    full = _ask(client, client_stack.model, messages)
    chunks = list(
        _ask(client, client_stack.model, messages, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        full.choices[0].finish_reason
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_seed_makes_sampling_reproducible(client: openai.OpenAI, client_stack: Stack) -> None:
    def sample(stop: str | list[str]) -> str | None:
        reply = client.chat.completions.create(
            model=client_stack.model,
            messages=[{"role": "user", "content": "Tell me a story."}],
            max_completion_tokens=MAX_TOKENS,
            temperature=1.0,
            top_p=0.9,
            seed=7,
            stop=stop,
        )
        return reply.choices[0].message.content

    assert sample(["zzz"]) == sample("zzz")


def test_bad_requests_get_openai_errors(client: openai.OpenAI, client_stack: Stack) -> None:
    bad_image = "data:image/png;base64," + base64.b64encode(b"definitely not a png").decode()
    with pytest.raises(openai.BadRequestError) as bad:
        _ask(client, client_stack.model, _user("What is it?", bad_image))
    assert bad.value.status_code == 400 and "image" in bad.value.message.lower()
    assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as many:
        _ask(client, client_stack.model, [{"role": "user", "content": "hi"}], n=2)
    assert many.value.param == "n" and "n=1" in many.value.message
    with pytest.raises(openai.NotFoundError):
        _ask(client, "no-such-model", [{"role": "user", "content": "hi"}])


def test_raw_http_errors(client_stack: Stack) -> None:
    url = f"{client_stack.open.openai_base}/chat/completions"
    status, body = _http("POST", url, b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    big = json.dumps(
        {"model": client_stack.model, "messages": [{"role": "user", "content": "x" * 5_000_000}]}
    )
    status, body = _http("POST", f"{client_stack.guarded.openai_base}/chat/completions", big.encode(), TOKEN)
    assert status == 413 and "too large" in body["error"]["message"]
    status, body = _http("GET", f"{client_stack.open.http}/healthz")
    assert (status, body) == (200, {"status": "ok"})
    status, text = _http("GET", f"{client_stack.open.http}/metrics")
    assert status == 200 and "tandem_http_requests_total" in text


def test_server_side_session(client: openai.OpenAI, pipe: Pipeline, client_stack: Stack) -> None:
    status, created = _http(
        "POST", f"{client_stack.open.openai_base}/sessions", b'{"system_prompt": "Be brief."}'
    )
    assert status == 200 and created["object"] == "session"
    sid = created["id"]
    first = _ask(client, client_stack.model, _user("What is this?", RED), extra_body={"session_id": sid})
    assert first.model_extra["session_id"] == sid  # type: ignore[index]
    second = _ask(client, client_stack.model, _user("Say more."), extra_headers={"X-Tandem-Session": sid})
    _, stored = _http("GET", f"{client_stack.open.openai_base}/sessions/{sid}")
    assert [m["role"] for m in stored["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert stored["messages"][1]["content"][0]["type"] == "image_id"
    grpc = pipe.chat(_user("What is this?", RED), system_prompt="Be brief.")
    grpc = pipe.chat("Say more.", session=grpc)
    assert second.choices[0].message.content == grpc.response.text  # type: ignore[union-attr]
    assert first.choices[0].message.content
    status, _ = _http("DELETE", f"{client_stack.open.openai_base}/sessions/{sid}")
    assert status == 200
    with pytest.raises(openai.NotFoundError):
        _ask(client, client_stack.model, _user("Still there?"), extra_body={"session_id": sid})


def test_bearer_token_when_auth_is_on(client_stack: Stack) -> None:
    base = client_stack.guarded.openai_base
    with (
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError),
    ):
        wrong.models.list()
    with openai.OpenAI(base_url=base, api_key=TOKEN, max_retries=0) as right:
        assert [m.id for m in right.models.list()] == [client_stack.model]
