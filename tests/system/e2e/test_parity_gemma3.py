"""Gemma 3 through the whole split system equals HF ``generate()`` token for token.

Vision service, Redis, language service and gateway in one process (support/gateway_stack.py) on
the tiny ``gemma3`` checkpoint: 4 pooled tokens per image inside ``\n\n<start_of_image> ...
<end_of_image>\n\n`` (the processor's text rewrite), image rows attending to each other both
ways during prefill, sliding-window layers (window 16, shorter than every prompt here), scaled
token embeddings and two end-of-turn ids. The embedding records the vision service wrote to Redis
are read back byte for byte and equal HF's ``get_image_features``. The checks are
support/family_parity.py's.
"""

from __future__ import annotations

import pytest
import torch

from tests.support import family_parity as parity
from tests.support.family_parity import SQUARE, TALL, WIDE
from tests.support.gateway_stack import Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKENS = {WIDE: 4, TALL: 4, SQUARE: 4}  # every image: 32x32 px, 4x4 patches pooled to 2x2

stack = parity.stack_fixture("gemma3")


async def test_one_image_equals_hf(stack: Stack) -> None:
    await parity.one_image(stack, TOKENS)


async def test_two_images_in_both_orders_equal_hf_and_differ(stack: Stack) -> None:
    await parity.two_images_both_orders(stack, WIDE, TALL, TOKENS)


async def test_three_turn_session_refers_back_to_the_first_image(stack: Stack) -> None:
    await parity.three_turn_session(stack, TALL, SQUARE, TOKENS)


async def test_concurrent_requests_are_batched_and_equal_hf(stack: Stack) -> None:
    await parity.concurrent_batching(stack, (WIDE, TALL, SQUARE))


async def test_embedding_records_in_redis_round_trip_unchanged(stack: Stack) -> None:
    inputs = stack.processor.image_processor(images=parity.pictures(WIDE, SQUARE), return_tensors="pt")
    with torch.no_grad():
        features = stack.full.get_image_features(inputs["pixel_values"]).pooler_output
    await parity.records_round_trip(stack, (WIDE, SQUARE), features)
