"""LLaVA-NeXT through the whole split system equals HF ``generate()`` token for token.

Vision service, Redis, language service and gateway in one process (support/gateway_stack.py) on
the tiny ``llava_next`` checkpoint. Images of different sizes cost different token counts (base
view + unpadded tiles + one ``image_newline`` per row), so each answer also checks that the
language side expanded ``<image>`` to exactly what ``LlavaNextProcessor`` does for that size.
The checks are support/family_parity.py's.
"""

from __future__ import annotations

import pytest
import torch

from tests.support import family_parity as parity
from tests.support.gateway_stack import Stack, png

pytestmark = pytest.mark.asyncio(loop_scope="module")

WIDE, TALL, SQUARE = png(1, (112, 56)), png(2, (56, 112)), png(3, (64, 48))
TOKENS = {WIDE: 52, TALL: 56, SQUARE: 70}  # the token count follows the image's size

stack = parity.stack_fixture("llava_next")


async def test_one_image_of_each_shape_equals_hf(stack: Stack) -> None:
    await parity.one_image(stack, TOKENS)


async def test_two_images_in_both_orders_equal_hf_and_differ(stack: Stack) -> None:
    await parity.two_images_both_orders(stack, WIDE, SQUARE, TOKENS)


async def test_three_turn_session_refers_back_to_the_first_image(stack: Stack) -> None:
    await parity.three_turn_session(stack, TALL, SQUARE, TOKENS)


async def test_concurrent_requests_equal_their_solo_runs_and_hf(stack: Stack) -> None:
    await parity.staggered_like_solo(stack, (WIDE, TALL, SQUARE))


async def test_embedding_records_in_redis_round_trip_unchanged(stack: Stack) -> None:
    inputs = stack.processor.image_processor(images=parity.pictures(WIDE, SQUARE), return_tensors="pt")
    with torch.no_grad():
        features = stack.full.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    await parity.records_round_trip(stack, (WIDE, SQUARE), features)
