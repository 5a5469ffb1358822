"""The correctness oracle: greedy tokens through the split system equal HF ``generate``.

Real Redis, the real vision service (in-process gRPC server on port 0) writing embeddings that
the real language server (gRPC, port 0) reads by image_id. For each tiny checkpoint family the
language service must produce, token for token, what the full HF model generates from
``processor.apply_chat_template`` (VLMs) or ``tokenizer.apply_chat_template`` (text-only).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio
import torch
from grpc import aio
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from vlm.v1 import common_pb2, llm_pb2, llm_pb2_grpc, vision_pb2, vision_pb2_grpc

from llm_service.config import LlmConfig
from llm_service.server import LanguageApp
from tandem.testing.checkpoints import make_test_image

pytestmark = pytest.mark.asyncio(loop_scope="module")

VLMS = ("llava", "qwen2_vl")
TEXT = ("llama", "qwen2")
N = 12
ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}


@dataclass
class Stack:
    """One family served end to end, plus its HF oracle."""

    kind: str
    app: LanguageApp
    language: llm_pb2_grpc.LanguageServiceStub
    vision: vision_pb2_grpc.VisionServiceStub | None
    full: Any
    processor: Any
    images: dict[str, bytes] = field(default_factory=dict)

    async def encode(self, *pngs: bytes) -> list[common_pb2.ImageRef]:
        assert self.vision is not None
        request = vision_pb2.EncodeRequest(images=[vision_pb2.ImageInput(data=p) for p in pngs])
        response = await self.vision.Encode(request)
        for data, encoded in zip(pngs, response.images, strict=True):
            self.images[encoded.ref.image_id] = data
        return [encoded.ref for encoded in response.images]

    def oracle(self, conversation: list[tuple[str, list[Any]]], n: int = N) -> list[int]:
        """HF ``generate`` of the full model for the same conversation."""
        messages = [
            {"role": role, "content": [self._hf_part(p) for p in parts]} for role, parts in conversation
        ]
        inputs = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        with torch.no_grad():
            out = self.full.generate(**inputs, do_sample=False, max_new_tokens=n)
        return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]

    def _hf_part(self, part: Any) -> dict[str, Any]:
        if isinstance(part, str):
            return {"type": "text", "text": part}
        image = Image.open(io.BytesIO(self.images[part.image_id])).convert("RGB")
        return {"type": "image", "image": image}


def png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    make_test_image(seed, size).save(out, format="PNG")
    return out.getvalue()


def request(conversation: list[tuple[str, list[Any]]], session: str = "", **sampling: Any) -> Any:
    messages = []
    for role, parts in conversation:
        pb_parts = [
            common_pb2.ContentPart(text=p) if isinstance(p, str) else common_pb2.ContentPart(image=p)
            for p in parts
        ]
        messages.append(common_pb2.Message(role=ROLES[role], parts=pb_parts))
    params = common_pb2.SamplingParams(**({"max_new_tokens": N} | sampling))
    return llm_pb2.GenerateTokensRequest(messages=messages, sampling=params, session_id=session)


@dataclass
class Answer:
    tokens: list[int]
    text: str
    final: llm_pb2.GenerateTokensResponse


async def generate(stack: Stack, req: llm_pb2.GenerateTokensRequest) -> Answer:
    tokens, text, last = [], [], None
    async for chunk in stack.language.GenerateTokens(req, timeout=60):
        tokens += list(chunk.token_ids)
        text.append(chunk.text)
        last = chunk
    assert last is not None and last.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
    return Answer(tokens, "".join(text), last)


async def expect_error(stack: Stack, req: llm_pb2.GenerateTokensRequest, code: grpc.StatusCode) -> str:
    with pytest.raises(aio.AioRpcError) as info:
        await generate(stack, req)
    assert info.value.code() == code, info.value.details()
    return str(info.value.details())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stacks(checkpoint, redis_server) -> AsyncIterator[Callable[[str], Awaitable[Stack]]]:  # type: ignore[no-untyped-def]
    """``await stacks(kind)``: start (once) vision + language servers for ``kind``."""
    from vision_service.config import VisionConfig
    from vision_service.inprocess import running_vision

    started: dict[str, Stack] = {}
    async with contextlib.AsyncExitStack() as exits:

        async def get(kind: str) -> Stack:
            if kind in started:
                return started[kind]
            path = str(checkpoint(kind))
            vision = None
            if kind in VLMS:
                config = VisionConfig(model=path, redis_url=redis_server.url, port=0)
                running = await exits.enter_async_context(running_vision(config))
                channel = await exits.enter_async_context(aio.insecure_channel(running.address))
                vision = vision_pb2_grpc.VisionServiceStub(channel)
            app = LanguageApp(LlmConfig(model=path, redis_url=redis_server.url, port=0, device="cpu"))
            port = await app.start()
            exits.push_async_callback(app.stop)
            channel = await exits.enter_async_context(aio.insecure_channel(f"127.0.0.1:{port}"))
            if kind in VLMS:
                full, processor = (
                    AutoModelForImageTextToText.from_pretrained(path),
                    AutoProcessor.from_pretrained(path),
                )
            else:
                full, processor = (
                    AutoModelForCausalLM.from_pretrained(path),
                    AutoTokenizer.from_pretrained(path),
                )
            started[kind] = Stack(
                kind, app, llm_pb2_grpc.LanguageServiceStub(channel), vision, full.eval(), processor
            )
            return started[kind]

        yield get


@pytest.mark.parametrize("kind", VLMS)
async def test_one_image(stacks, kind: str) -> None:
    stack = await stacks(kind)
    (ref,) = await stack.encode(png(1, (112, 56)))
    conversation = [("user", [ref, "What is in this image?"])]
    answer = await generate(stack, request(conversation))
    assert answer.tokens == stack.oracle(conversation)
    assert answer.final.usage.image_tokens == ref.num_tokens
    assert answer.final.usage.completion_tokens == len(answer.tokens)
    assert stack.vision is not None
    vision_info = (await stack.vision.GetVisionInfo(vision_pb2.GetVisionInfoRequest())).info
    info = (await stack.language.GetLanguageInfo(llm_pb2.GetLanguageInfoRequest())).info
    assert (info.is_vlm, info.fingerprint) == (True, vision_info.fingerprint)


@pytest.mark.parametrize("kind", VLMS)
async def test_two_images(stacks, kind: str) -> None:
    stack = await stacks(kind)
    refs = await stack.encode(png(2), png(3, (84, 112)))
    conversation = [("system", ["Answer briefly."]), ("user", [refs[0], "Compare", refs[1], "these two."])]
    answer = await generate(stack, request(conversation))
    assert answer.tokens == stack.oracle(conversation)
    assert answer.final.usage.image_tokens == sum(r.num_tokens for r in refs)


@pytest.mark.parametrize("kind", [*VLMS, *TEXT])
async def test_second_turn_with_history(stacks, kind: str) -> None:
    stack = await stacks(kind)
    vlm = kind in VLMS
    first_images = await stack.encode(png(4)) if vlm else []
    turn1 = [("user", [*first_images, "Describe the picture."])]
    first = await generate(stack, request(turn1, session=f"s-{kind}"))
    assert first.tokens == stack.oracle(turn1)
    second_images = await stack.encode(png(5, (56, 112))) if vlm else []
    turn2 = [*turn1, ("assistant", [first.text]), ("user", [*second_images, "And now this one?"])]
    second = await generate(stack, request(turn2, session=f"s-{kind}"))
    assert second.tokens == stack.oracle(turn2)
    assert second.final.usage.cached_tokens > 0  # the first turn's KV (image rows included) was reused


@pytest.mark.parametrize("kind", VLMS)
async def test_concurrent_requests_match_their_solo_runs(stacks, kind: str) -> None:
    stack = await stacks(kind)
    refs = await stack.encode(png(6), png(7, (112, 112)))
    texts = ["Hi.", "What colour is the sky today?", "Describe it.", "Two apples and a white house, please."]
    requests = [
        request([("user", [*refs[: i % 3], texts[i % 4] * (1 + i // 4)])], max_new_tokens=4 + 3 * i)
        for i in range(8)
    ]
    alone = [(await generate(stack, r)).tokens for r in requests]

    async def later(i: int) -> list[int]:
        await asyncio.sleep(0.02 * i)
        return (await generate(stack, requests[i])).tokens

    together = await asyncio.gather(*(later(i) for i in range(8)))
    assert together == alone
    assert [len(t) for t in alone] == [4 + 3 * i for i in range(8)]


async def test_seeded_sampling_is_reproducible(stacks) -> None:
    stack = await stacks("llava")
    (ref,) = await stack.encode(png(8))
    conversation = [("user", [ref, "Tell me a story."])]

    def sampled(seed: int) -> llm_pb2.GenerateTokensRequest:
        return request(conversation, temperature=1.0, top_p=0.95, top_k=50, seed=seed, max_new_tokens=16)

    first = await generate(stack, sampled(1234))
    together = await asyncio.gather(generate(stack, sampled(1234)), generate(stack, sampled(99)))
    assert together[0].tokens == first.tokens
    others = [together[1].tokens] + [(await generate(stack, sampled(s))).tokens for s in (7, 8)]
    assert any(tokens != first.tokens for tokens in others)


async def test_images_to_a_text_only_model_are_invalid(stacks) -> None:
    stack = await stacks("llama")
    ref = common_pb2.ImageRef(image_id="ab" * 32, num_tokens=16)
    details = await expect_error(stack, request([("user", [ref, "hi"])]), grpc.StatusCode.INVALID_ARGUMENT)
    assert "text-only" in details
    info = (await stack.language.GetLanguageInfo(llm_pb2.GetLanguageInfoRequest())).info
    assert (info.is_vlm, info.architecture, info.context_length) == (False, "LlamaForCausalLM", 1024)


@pytest.mark.parametrize(("kind", "placeholder"), [("llava", "<image>"), ("qwen2_vl", "<|image_pad|>")])
async def test_placeholder_in_text_is_not_an_image_slot(stacks, kind: str, placeholder: str) -> None:
    stack = await stacks(kind)
    metrics = stack.app.metrics
    reads = metrics.get("vision_cache_hits") + metrics.get("vision_cache_misses")
    answer = await generate(stack, request([("user", [f"What is {placeholder} here? {placeholder}"])]))
    assert len(answer.tokens) == N and answer.final.usage.image_tokens == 0
    # no embedding was read
    assert metrics.get("vision_cache_hits") + metrics.get("vision_cache_misses") == reads
    (ref,) = await stack.encode(png(9))
    answer = await generate(stack, request([("user", [ref, f"And {placeholder} this?"])]))
    assert answer.final.usage.image_tokens == ref.num_tokens


async def test_prompt_plus_max_new_tokens_over_the_context_is_invalid(stacks) -> None:
    stack = await stacks("qwen2")
    details = await expect_error(
        stack, request([("user", ["hello"])], max_new_tokens=1020), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "context length" in details
    long_prompt = [("user", ["the cat sees the sky " * 300])]
    await expect_error(stack, request(long_prompt, max_new_tokens=0), grpc.StatusCode.INVALID_ARGUMENT)


async def test_missing_embedding_is_not_found_until_re_encoded(stacks, redis_server) -> None:
    stack = await stacks("llava")
    (ref,) = await stack.encode(png(10))
    conversation = [("user", [ref, "What is this?"])]
    expected = await generate(stack, request(conversation))
    stranger = common_pb2.ImageRef(image_id="ef" * 32, num_tokens=ref.num_tokens)
    details = await expect_error(stack, request([("user", [stranger, "hi"])]), grpc.StatusCode.NOT_FOUND)
    assert "efefefefefef" in details and "re-encode" in details
    cache = stack.app.current().features.cache
    assert cache is not None
    await cache.store.delete(cache.key(ref.image_id))  # evicted between turns
    await expect_error(stack, request(conversation), grpc.StatusCode.NOT_FOUND)
    assert stack.vision is not None
    await stack.vision.Encode(vision_pb2.EncodeRequest(images=[vision_pb2.ImageInput(image_id=ref.image_id)]))
    assert (await generate(stack, request(conversation))).tokens == expected.tokens
