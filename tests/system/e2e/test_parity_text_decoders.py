"""Text-only decoders served by the generic text adapter equal HF ``generate`` token for token.

Mistral, Gemma and Phi-3 have string-content templates (``{{ message['content'] }}``), Qwen3 a
parts-content one; the oracle gets each conversation as its users would write it (string
content, or OpenAI parts for the parts template), so the prompt builder's conversion is part of
what is checked. Greedy, one turn, three turns, under concurrent batching; ``--chat-template``
and ``--served-model-name`` through the real language server; one family through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import torch
from grpc import aio
from transformers import AutoModelForCausalLM, AutoTokenizer
from vlm.v1 import common_pb2, gateway_pb2, llm_pb2, llm_pb2_grpc

from llm_service.config import LlmConfig
from llm_service.server import LanguageApp
from tests.support.gateway_stack import greedy, messages, reply, start_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

STRING_KINDS = ("mistral", "gemma", "phi3")
KINDS = (*STRING_KINDS, "qwen3")
N = 10
ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}
Conversation = list[tuple[str, str]]
OTHER_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:{% endif %}"
)


@dataclass
class Served:
    kind: str
    app: LanguageApp
    stub: llm_pb2_grpc.LanguageServiceStub
    full: Any
    tokenizer: Any

    def oracle(self, conversation: Conversation, template: str | None = None, n: int = N) -> list[int]:
        """HF greedy tokens, the conversation in the template's natural content format."""
        string = self.kind in STRING_KINDS or template is not None
        hf = [
            {"role": role, "content": text if string else [{"type": "text", "text": text}]}
            for role, text in conversation
        ]
        inputs = self.tokenizer.apply_chat_template(
            hf, chat_template=template, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        with torch.no_grad():
            out = self.full.generate(**inputs, do_sample=False, max_new_tokens=n)
        return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]

    async def generate(self, conversation: Conversation, n: int = N) -> tuple[list[int], str]:
        pb = [
            common_pb2.Message(role=ROLES[role], parts=[common_pb2.ContentPart(text=text)])
            for role, text in conversation
        ]
        request = llm_pb2.GenerateTokensRequest(
            messages=pb, sampling=common_pb2.SamplingParams(max_new_tokens=n)
        )
        chunks = [chunk async for chunk in self.stub.GenerateTokens(request, timeout=60)]
        return [t for c in chunks for t in c.token_ids], "".join(c.text for c in chunks)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(checkpoint) -> AsyncIterator[Callable[..., Awaitable[Served]]]:  # type: ignore[no-untyped-def]
    """``await served(kind, **config)``: a language server for ``kind`` (once per arguments)."""
    started: dict[tuple[str, tuple[tuple[str, Any], ...]], Served] = {}
    async with contextlib.AsyncExitStack() as exits:

        async def get(kind: str, **extra: Any) -> Served:
            key = (kind, tuple(sorted(extra.items())))
            if key not in started:
                path = str(checkpoint(kind))
                app = LanguageApp(LlmConfig(model=path, port=0, device="cpu", **extra))
                port = await app.start()
                exits.push_async_callback(app.stop)
                channel = await exits.enter_async_context(aio.insecure_channel(f"127.0.0.1:{port}"))
                full = AutoModelForCausalLM.from_pretrained(path).eval()
                stub = llm_pb2_grpc.LanguageServiceStub(channel)
                started[key] = Served(kind, app, stub, full, AutoTokenizer.from_pretrained(path))
            return started[key]

        yield get


@pytest.mark.parametrize("kind", KINDS)
async def test_one_turn_equals_hf(served, kind: str) -> None:  # type: ignore[no-untyped-def]
    stack = await served(kind)
    conversation = [("user", "What colour is the sky today?")]
    tokens, _ = await stack.generate(conversation)
    assert tokens == stack.oracle(conversation)
    info = (await stack.stub.GetLanguageInfo(llm_pb2.GetLanguageInfoRequest())).info
    assert (info.model, info.is_vlm, info.architecture.endswith("ForCausalLM")) == (kind, False, True)


@pytest.mark.parametrize("kind", KINDS)
async def test_three_turns_equal_hf(served, kind: str) -> None:  # type: ignore[no-untyped-def]
    stack = await served(kind)
    conversation: Conversation = []
    if kind != "gemma":  # Gemma's templates have no system role
        conversation.append(("system", "Answer briefly."))
    for question in ("Describe the red car.", "And the river?", "What did I ask first?"):
        conversation.append(("user", question))
        tokens, text = await stack.generate(conversation)
        assert tokens == stack.oracle(conversation)
        conversation.append(("assistant", text))


@pytest.mark.parametrize("kind", KINDS)
async def test_concurrent_requests_equal_hf(served, kind: str) -> None:  # type: ignore[no-untyped-def]
    stack = await served(kind)
    conversations = [[("user", "Hi." * (1 + i))] for i in range(2)] + [
        [("user", "Two apples and a white house, please.")],
        [("user", "The cat sees a blue box today.")],
    ]
    answers = await asyncio.gather(*(stack.generate(c, n=4 + 3 * i) for i, c in enumerate(conversations)))
    for i, (conversation, (tokens, _)) in enumerate(zip(conversations, answers, strict=True)):
        assert tokens == stack.oracle(conversation, n=4 + 3 * i)


async def test_chat_template_and_served_name_flags(served) -> None:  # type: ignore[no-untyped-def]
    stack = await served("qwen3", chat_template=OTHER_TEMPLATE, served_model_name="my-qwen")
    conversation = [("user", "Describe the green tree.")]
    tokens, _ = await stack.generate(conversation)
    assert tokens == stack.oracle(conversation, template=OTHER_TEMPLATE)
    assert tokens != stack.oracle(conversation)
    info = (await stack.stub.GetLanguageInfo(llm_pb2.GetLanguageInfoRequest())).info
    assert info.model == "my-qwen"


async def test_gemma_through_the_gateway_equals_hf(checkpoint, redis_server) -> None:  # type: ignore[no-untyped-def]
    async with contextlib.AsyncExitStack() as exits:
        stack = await start_stack("gemma", checkpoint("gemma"), redis_server.url, exits)
        oracle = Served("gemma", stack.llm, None, stack.full, stack.processor)  # type: ignore[arg-type]
        info = (await stack.stub.GetModelInfo(gateway_pb2.GetModelInfoRequest())).info
        assert (info.model, info.architecture, info.is_vlm) == ("gemma", "GemmaForCausalLM", False)
        conversation: Conversation = [("user", "What is in the picture?")]
        request = gateway_pb2.GenerateRequest(
            messages=messages([(r, [t]) for r, t in conversation]), sampling=greedy(N)
        )
        got = await reply(stack.stub.Generate(request))
        assert got.tokens == oracle.oracle(conversation)
