"""SmolVLM through the whole split system equals HF ``generate()`` token for token.

Vision service, Redis, language service and gateway in one process (support/gateway_stack.py) on
the tiny ``smolvlm`` checkpoint: each image is cut into 32 px tiles plus a global image (112x56
into 1x2 tiles, 84x112 and 140x140 into 2x2), each frame pixel-shuffled to 4 tokens, and
``<image>`` becomes the processor's block of ``<row_r_col_c>`` markers, tile tokens, newlines and
the global image. So each answer also checks that the language side wrote exactly the block
``SmolVLMProcessor`` writes for that image's tile grid. The checks are support/family_parity.py's.
"""

from __future__ import annotations

import pytest
import torch

from tests.support import family_parity as parity
from tests.support.family_parity import SQUARE, TALL, WIDE
from tests.support.gateway_stack import Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKENS = {WIDE: 12, TALL: 20, SQUARE: 20}  # (rows * cols + 1 global) frames x 4 tokens

stack = parity.stack_fixture("smolvlm")


async def test_one_image_of_each_shape_equals_hf(stack: Stack) -> None:
    await parity.one_image(stack, TOKENS)


async def test_two_images_in_both_orders_equal_hf_and_differ(stack: Stack) -> None:
    await parity.two_images_both_orders(stack, WIDE, TALL, TOKENS)


async def test_three_turn_session_refers_back_to_the_first_image(stack: Stack) -> None:
    await parity.three_turn_session(stack, TALL, WIDE, TOKENS)


async def test_concurrent_requests_are_batched_and_equal_hf(stack: Stack) -> None:
    await parity.concurrent_batching(stack, (WIDE, TALL, SQUARE))


async def test_embedding_records_in_redis_round_trip_unchanged(stack: Stack) -> None:
    inputs = stack.processor.image_processor(
        images=[[image] for image in parity.pictures(WIDE, TALL)], return_tensors="pt"
    )
    with torch.no_grad():
        features = stack.full.get_image_features(
            inputs["pixel_values"], inputs["pixel_attention_mask"]
        ).pooler_output
    await parity.records_round_trip(stack, (WIDE, TALL), features, grids=[[1, 1, 2], [1, 2, 2]])
