"""Answers through the public API equal HF ``generate()``: one and two images (bytes, data URIs,
OpenAI-style messages) for LLaVA and Qwen2-VL, a Qwen2-VL two-turn session with a new image per
turn, and a three-turn session whose third turn names the first turn's image by id while the
embeddings are flushed from Redis and the gateway is restarted between turns, with idempotent
retries (TESTPLAN 1, 2, 23).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from vlm.v1 import gateway_pb2

from tandem.redis_local import LocalRedis
from tests.support.gateway_stack import Reply, Stack, flush_embeddings, greedy, messages, part, png, reply

pytestmark = pytest.mark.asyncio(loop_scope="package")


async def test_one_image_equals_hf(stacks: dict[str, Stack]) -> None:
    stack = stacks["llava"]
    image = png(1, (112, 56))
    conversation: list[tuple[str, list[Any]]] = [("user", [image, "What is in this image?"])]
    got = await reply(
        stack.stub.Generate(gateway_pb2.GenerateRequest(messages=messages(conversation), sampling=greedy()))
    )
    assert got.tokens == stack.oracle(conversation)
    assert len(got.first.image_ids) == 1 and got.last.usage.image_tokens > 0


async def test_two_images_openai_style_equal_hf(stacks: dict[str, Stack]) -> None:
    stack = stacks["llava"]
    a, b = png(2), png(3, (84, 112))
    uri = "data:image/png;base64," + base64.b64encode(b).decode()
    conversation = [("system", ["Answer briefly."]), ("user", [a, "Compare", {"url": uri}, "these two."])]
    request = gateway_pb2.GenerateRequest(messages=messages(conversation), sampling=greedy())
    got = await reply(stack.stub.Generate(request))
    assert got.tokens == stack.oracle(
        [("system", ["Answer briefly."]), ("user", [a, "Compare", b, "these two."])]
    )
    assert len(got.first.image_ids) == 2


async def test_session_turns_survive_eviction_and_restart(
    stacks: dict[str, Stack], redis_server: LocalRedis
) -> None:
    stack = stacks["llava"]
    image = png(4)
    sid = (await stack.stub.CreateSession(gateway_pb2.CreateSessionRequest())).session.session_id
    history: list[tuple[str, list[Any]]] = []

    async def turn(parts: list[Any], oracle_parts: list[Any], request_id: str) -> Reply:
        request = gateway_pb2.ChatRequest(
            session_id=sid, parts=[part(p) for p in parts], sampling=greedy(), request_id=request_id
        )
        got = await reply(stack.stub.Chat(request, timeout=60))
        history.append(("user", oracle_parts))
        assert got.tokens == stack.oracle(history)
        history.append(("assistant", [got.text]))
        return got

    first = await turn([image, "Describe the picture."], [image, "Describe the picture."], "t1")
    image_id = first.first.image_ids[0]
    assert await flush_embeddings(redis_server.url, stack.prefix) > 0
    await stack.restart_gateway()
    await turn(["And the colours?"], ["And the colours?"], "t2")
    assert await flush_embeddings(redis_server.url, stack.prefix) > 0
    third = await turn([{"image_id": image_id}, "Look again."], [image, "Look again."], "t3")
    assert list(third.first.image_ids) == [image_id]
    parts = [part({"image_id": image_id}), part("Look again.")]  # a retry repeats the turn
    retry = gateway_pb2.ChatRequest(session_id=sid, parts=parts, sampling=greedy(), request_id="t3")
    retried = await reply(stack.stub.Chat(retry))
    assert retried.first.replayed and retried.tokens == third.tokens
    session = (await stack.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert len(session.messages) == 6
    ids = [p.image_id for m in session.messages for p in m.parts if p.WhichOneof("kind") == "image_id"]
    assert ids == [image_id, image_id]


async def test_qwen2_vl_one_and_two_images_equal_hf(qwen2_vl: Stack) -> None:
    one: list[tuple[str, list[Any]]] = [("user", [png(1, (112, 56)), "What is in this image?"])]
    got = await reply(
        qwen2_vl.stub.Generate(gateway_pb2.GenerateRequest(messages=messages(one), sampling=greedy()))
    )
    assert got.tokens == qwen2_vl.oracle(one)
    assert len(got.first.image_ids) == 1 and got.last.usage.image_tokens > 0
    a, b = png(2), png(3, (84, 112))
    uri = "data:image/png;base64," + base64.b64encode(b).decode()
    two = [("system", ["Answer briefly."]), ("user", [a, "Compare", {"url": uri}, "these two."])]
    got = await reply(
        qwen2_vl.stub.Generate(gateway_pb2.GenerateRequest(messages=messages(two), sampling=greedy()))
    )
    assert got.tokens == qwen2_vl.oracle(
        [("system", ["Answer briefly."]), ("user", [a, "Compare", b, "these two."])]
    )
    assert len(got.first.image_ids) == 2 and len(set(got.first.image_ids)) == 2


async def test_qwen2_vl_second_session_turn_with_a_new_image_equals_hf(qwen2_vl: Stack) -> None:
    sid = (await qwen2_vl.stub.CreateSession(gateway_pb2.CreateSessionRequest())).session.session_id
    history: list[tuple[str, list[Any]]] = []
    for image, prompt in ((png(4), "Describe the picture."), (png(5, (56, 112)), "And now this one?")):
        request = gateway_pb2.ChatRequest(
            session_id=sid, parts=[part(image), part(prompt)], sampling=greedy()
        )
        got = await reply(qwen2_vl.stub.Chat(request, timeout=60))
        history.append(("user", [image, prompt]))
        assert got.tokens == qwen2_vl.oracle(history)
        history.append(("assistant", [got.text]))
    assert got.last.usage.image_tokens > 0
    assert got.last.usage.cached_tokens > 0  # the session's replica reused turn 1's KV, image rows too
    session = (await qwen2_vl.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert len(session.messages) == 4
