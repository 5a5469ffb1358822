"""The OpenAI ``model`` field: the served name or nothing; any other name is ``model_not_found``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.messages import ModelInfo
from gateway.openai_http import HttpOptions, OpenAIHttpServer
from tests.unit.gateway.test_openai_fake import FakeGateway

NAME = "my-model"


class NamedGateway(FakeGateway):
    def model_info(self) -> ModelInfo:
        return ModelInfo(NAME, "MistralForCausalLM", False, "f" * 32, 1024)


@pytest.fixture
async def base() -> AsyncIterator[str]:
    server = OpenAIHttpServer(NamedGateway(), HttpOptions(port=0))  # type: ignore[arg-type]
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


async def _post(base: str, **extra: Any) -> tuple[int, Any]:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    async with aiohttp.ClientSession() as http, http.post(f"{base}/v1/chat/completions", json=body) as r:
        return r.status, await r.json()


async def test_models_lists_the_served_name(base: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/v1/models") as r:
        assert [m["id"] for m in (await r.json())["data"]] == [NAME]


async def test_a_request_may_name_the_model_or_omit_it(base: str) -> None:
    named, omitted = await _post(base, model=NAME), await _post(base)
    assert named[0] == omitted[0] == 200
    assert named[1]["model"] == omitted[1]["model"] == NAME


async def test_another_name_is_model_not_found(base: str) -> None:
    status, body = await _post(base, model="gpt-4o")
    assert status == 404
    assert (body["error"]["code"], body["error"]["param"]) == ("model_not_found", "model")


@pytest.mark.parametrize("model", ["", 3, None])
async def test_an_empty_or_non_string_model_is_invalid_unless_left_out(base: str, model: Any) -> None:
    status, body = await _post(base, model=model)
    assert status == (200 if model is None else 400), body
