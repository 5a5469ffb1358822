"""InternVL through the whole split system equals HF ``generate()`` token for token.

Vision service, Redis, language service and gateway in one process (support/gateway_stack.py) on
the tiny ``internvl`` checkpoint: each image is cut into the 32 px tile grid closest to its
aspect ratio plus a thumbnail (112x56: 2 tiles, 84x112: 6, 140x140: 4), each tile
pixel-unshuffled to 4 tokens, and ``<IMG_CONTEXT>`` becomes ``<img>`` + those tokens +
``</img>`` (the processor's text rewrite). So each answer also checks that the language side
expanded each image to what ``InternVLProcessor`` writes for its tile count. The checks are
support/family_parity.py's.
"""

from __future__ import annotations

import pytest
import torch

from tests.support import family_parity as parity
from tests.support.family_parity import SQUARE, TALL, WIDE
from tests.support.gateway_stack import Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKENS = {WIDE: 12, TALL: 28, SQUARE: 20}  # (tiles + 1 thumbnail) x 4 tokens

stack = parity.stack_fixture("internvl")


async def test_one_image_of_each_shape_equals_hf(stack: Stack) -> None:
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
        tiles = stack.full.get_image_features(inputs["pixel_values"]).pooler_output
    features = [f.reshape(-1, f.shape[-1]) for f in tiles.split(inputs["num_patches"].tolist())]
    await parity.records_round_trip(stack, (WIDE, SQUARE), features)
