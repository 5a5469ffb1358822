"""Qwen3-VL through the whole split system equals HF ``generate()`` token for token.

Vision service, Redis, language service and gateway in one process (support/gateway_stack.py) on
the tiny ``qwen3_vl`` checkpoint: each image's record carries, besides the features that replace
its ``<|image_pad|>`` rows, the deepstack features of two vision blocks, which the language
service adds to the outputs of decoder layers 0 and 1 at the image's rows during prefill (with
interleaved M-RoPE over the image grids). The records the vision service wrote to Redis hold
exactly HF's ``get_image_features`` (merged and deepstack) and re-encode to the bytes stored.
The checks are support/family_parity.py's.
"""

from __future__ import annotations

import pytest
import torch

from tests.support import family_parity as parity
from tests.support.family_parity import SQUARE, TALL, WIDE
from tests.support.gateway_stack import Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKENS = {WIDE: 8, TALL: 12, SQUARE: 16}  # grids 1x4x8, 1x8x6, 1x8x8 (patch 16), merged 2x2

stack = parity.stack_fixture("qwen3_vl")


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
        out = stack.full.get_image_features(inputs["pixel_values"], grid)
    deepstack = [{"deepstack": torch.stack(layers)} for layers in zip(*out.deepstack_features, strict=True)]
    await parity.records_round_trip(stack, (WIDE, SQUARE), out.pooler_output, grid.tolist(), deepstack)
