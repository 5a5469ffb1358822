"""Qwen2.5-VL through the whole split system equals HF ``generate()`` token for token.

Vision service, Redis, language service and gateway in one process (support/gateway_stack.py) on
the tiny ``qwen2_5_vl`` checkpoint, whose vision tower attends in 56 px windows: the images here
span 2 to 9 windows (an 84 px side leaves a ragged one), so the answers depend on the windowing,
the grids (M-RoPE) and the token counts all matching HF. The checks are support/family_parity.py's.
"""

from __future__ import annotations

import pytest
import torch

from tests.support import family_parity as parity
from tests.support.family_parity import SQUARE, TALL, WIDE
from tests.support.gateway_stack import Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKENS = {WIDE: 8, TALL: 12, SQUARE: 25}  # grids 1x4x8, 1x8x6, 1x10x10, merged 2x2

stack = parity.stack_fixture("qwen2_5_vl")


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
    grid = inputs["image_grid_thw"]
    with torch.no_grad():
        features = stack.full.get_image_features(inputs["pixel_values"], grid).pooler_output
    await parity.records_round_trip(stack, (WIDE, SQUARE), features, grid.tolist())
