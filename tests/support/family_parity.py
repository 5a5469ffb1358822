"""The checks every VLM family passes through the whole split system (issue 14's done bar).

Each family's ``tests/system/e2e/test_parity_<family>.py`` takes its ``stack`` fixture from
``stack_fixture`` (its tiny checkpoint behind a gateway, ``gateway_stack.start_stack``) and calls
these with what is its own: the token count of each image and HF's features for the embedding
records. Every answer must equal HF ``generate()`` on the same checkpoint token for token, and
every image token count must be what HF's processor puts in the prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest_asyncio
import redis.asyncio as aioredis
import torch
from PIL import Image
from vlm.v1 import gateway_pb2

from tandem.embeddings import record
from tandem.embeddings.cache import Embedding
from tandem.models.fingerprint import fingerprint
from tests.support.engines import gather_with_peak
from tests.support.gateway_stack import Reply, Stack, greedy, hf_part, messages, part, png, reply, start_stack

Conversation = list[tuple[str, list[Any]]]

# Three shapes (wide, tall with an odd side, larger square), as PNG bytes.
WIDE, TALL, SQUARE = png(1, (112, 56)), png(2, (84, 112)), png(3, (140, 140))


def stack_fixture(kind: str) -> Any:
    """A module-scoped ``stack`` fixture: checkpoint ``kind`` served end to end behind a gateway."""

    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def stack(checkpoint, redis_server) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
        async with contextlib.AsyncExitStack() as exits:
            yield await start_stack(kind, checkpoint(kind), redis_server.url, exits)

    return stack


def pictures(*images: bytes) -> list[Image.Image]:
    """The PIL images HF's processor gets for these PNG bytes."""
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in images]


def hf_image_tokens(stack: Stack, conversation: Conversation) -> int:
    """How many image placeholders HF's processor puts in the prompt of ``conversation`` (the rows
    HF's model fills with image features: ``config.image_token_id``, not the processor's attribute,
    which for Gemma 3 names ``<start_of_image>``)."""
    hf = [{"role": role, "content": [hf_part(p) for p in parts]} for role, parts in conversation]
    inputs = stack.processor.apply_chat_template(
        hf, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    return int((inputs["input_ids"] == stack.full.config.image_token_id).sum())


async def generate(stack: Stack, conversation: Conversation) -> Reply:
    request = gateway_pb2.GenerateRequest(messages=messages(conversation), sampling=greedy())
    return await reply(stack.stub.Generate(request, timeout=60))


async def one_image(stack: Stack, tokens: Mapping[bytes, int]) -> None:
    """Each image alone equals HF and costs its expected token count."""
    for image, count in tokens.items():
        conversation: Conversation = [("user", [image, "What is in this image?"])]
        got = await generate(stack, conversation)
        assert got.tokens == stack.oracle(conversation)
        assert got.last.usage.image_tokens == count == hf_image_tokens(stack, conversation)


async def two_images_both_orders(
    stack: Stack, first: bytes, second: bytes, tokens: Mapping[bytes, int]
) -> None:
    """Two images in one message, in both orders: each equals HF and costs both images' tokens,
    and the answers differ."""
    answers, count = [], tokens[first] + tokens[second]
    for a, b in ((first, second), (second, first)):
        conversation: Conversation = [
            ("system", ["Answer briefly."]),
            ("user", [a, "Compare", b, "these two."]),
        ]
        got = await generate(stack, conversation)
        assert got.tokens == stack.oracle(conversation)
        assert got.last.usage.image_tokens == count == hf_image_tokens(stack, conversation)
        assert len(set(got.first.image_ids)) == 2
        answers.append(got.tokens)
    assert answers[0] != answers[1]


async def three_turn_session(stack: Stack, first: bytes, second: bytes, tokens: Mapping[bytes, int]) -> None:
    """A session: ``first``, then ``second``, then ``first`` again by its image id; all equal HF,
    and the third prompt holds all three images' tokens, the earlier turns' from the KV cache."""
    sid = (await stack.stub.CreateSession(gateway_pb2.CreateSessionRequest())).session.session_id
    history: Conversation = []

    async def turn(parts: list[Any], oracle_parts: list[Any]) -> Reply:
        request = gateway_pb2.ChatRequest(session_id=sid, parts=[part(p) for p in parts], sampling=greedy())
        got = await reply(stack.stub.Chat(request, timeout=60))
        history.append(("user", oracle_parts))
        assert got.tokens == stack.oracle(history)
        history.append(("assistant", [got.text]))
        return got

    opening = await turn([first, "Describe the picture."], [first, "Describe the picture."])
    await turn([second, "And this one?"], [second, "And this one?"])
    image_id = opening.first.image_ids[0]
    third = await turn([{"image_id": image_id}, "Back to the first."], [first, "Back to the first."])
    assert list(third.first.image_ids) == [image_id]
    assert third.last.usage.image_tokens == tokens[first] * 2 + tokens[second]
    assert third.last.usage.cached_tokens > 0  # the earlier turns' KV, image rows included


def mixed_conversations(images: Sequence[bytes]) -> list[Conversation]:
    """Six one-message conversations of one or two of ``images`` (three) and a text."""
    texts = ("Hi.", "What colour is the sky today?", "Describe it.", "Two apples, please.")
    return [[("user", [*images[i % 3 : i % 3 + 1 + i % 2], texts[i % 4]])] for i in range(6)]


async def concurrent_batching(stack: Stack, images: Sequence[bytes]) -> None:
    """Six requests sent at once are decoded together and each equals HF."""
    conversations = mixed_conversations(images)
    expected = [stack.oracle(c) for c in conversations]
    engine = stack.llm.current().engine
    together, peak = await gather_with_peak(engine, *(generate(stack, c) for c in conversations))
    assert [got.tokens for got in together] == expected
    assert peak > 1  # decoded in one batch, not one after another


async def staggered_like_solo(stack: Stack, images: Sequence[bytes]) -> None:
    """Six requests sent 20 ms apart (joining a running batch) each equal the same request sent
    alone, and HF."""
    conversations = mixed_conversations(images)
    alone = [(await generate(stack, c)).tokens for c in conversations]

    async def later(i: int) -> list[int]:
        await asyncio.sleep(0.02 * i)
        return (await generate(stack, conversations[i])).tokens

    together = await asyncio.gather(*(later(i) for i in range(len(conversations))))
    assert list(together) == alone
    assert alone == [stack.oracle(c) for c in conversations]


async def records_round_trip(
    stack: Stack,
    images: Sequence[bytes],
    features: Sequence[torch.Tensor],
    grids: Sequence[list[int]] | None = None,
    extras: Sequence[Mapping[str, torch.Tensor]] | None = None,
) -> None:
    """The records the vision service wrote to Redis for ``images`` hold exactly HF's ``features``
    (and ``grids``, and the named ``extras`` tensors), and re-encode to the very bytes stored."""
    got = await generate(stack, [("user", [images[0], "Compare", *images[1:], "these."])])
    config = stack.llm.config
    model_print = fingerprint(Path(config.model), config.model)
    client = aioredis.Redis.from_url(config.redis_url)
    try:
        for n, (image_id, want) in enumerate(zip(got.first.image_ids, features, strict=True)):
            value = await client.get(f"{stack.prefix}:emb:{model_print}:{image_id}")
            assert isinstance(value, bytes)
            header, data = record.split(value)
            names = tuple(extras[n]) if extras is not None else ()
            expected = record.Expected(model_print, want.shape[-1], image_id, want.shape[0], names)
            record.validate(header, len(data), expected)
            embedding = Embedding.from_record(header, data)
            assert torch.equal(embedding.features, want)
            for name in names:
                assert torch.equal(embedding.extras[name], extras[n][name]), name  # type: ignore[index]
            assert embedding.grid_thw == (list(grids[n]) if grids is not None else [])
            assert embedding.to_record() == value
    finally:
        await client.aclose()
