"""LLaVA-OneVision through the whole split system equals HF ``generate()`` token for token.

Vision service, Redis, language service and gateway in one process (support/gateway_stack.py) on
the tiny ``llava_onevision`` checkpoint. An image alone in its prompt is seen at any resolution
(its token count follows its size: 52 for 112x56, 46 for the others, whose tile features are
shrunk past "anyres_max_2"); an image among several is seen as one padded square tile, 17
tokens. The same image is thus embedded two ways, and each test below reuses the records the
earlier ones cached: a two-image prompt after one-image prompts of the same images, and a
session whose first turn sees an image alone and whose later turns see it among others. Every
answer equals HF, so the cache never served one way for the other. The checks are
support/family_parity.py's.
"""

from __future__ import annotations

import pytest
import torch

from tests.support import family_parity as parity
from tests.support.family_parity import SQUARE, TALL, WIDE
from tests.support.gateway_stack import Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALONE = {WIDE: 52, TALL: 46, SQUARE: 46}  # any resolution: the token count follows the size
AMONG_OTHERS = {WIDE: 17, TALL: 17, SQUARE: 17}  # one square tile + image_newline

stack = parity.stack_fixture("llava_onevision")


async def test_one_image_of_each_shape_equals_hf(stack: Stack) -> None:
    await parity.one_image(stack, ALONE)


async def test_two_images_in_both_orders_equal_hf_and_differ(stack: Stack) -> None:
    await parity.two_images_both_orders(stack, WIDE, TALL, AMONG_OTHERS)


async def test_three_turn_session_refers_back_to_the_first_image(stack: Stack) -> None:
    await parity.three_turn_session(stack, TALL, SQUARE, AMONG_OTHERS)


async def test_concurrent_requests_are_batched_and_equal_hf(stack: Stack) -> None:
    await parity.concurrent_batching(stack, (WIDE, TALL, SQUARE))


async def test_embedding_records_in_redis_round_trip_unchanged(stack: Stack) -> None:
    pictures = parity.pictures(WIDE, SQUARE)
    image_processor = stack.processor.image_processor
    alone = image_processor(images=pictures, return_tensors="pt")
    together = image_processor(images=[pictures], return_tensors="pt")
    with torch.no_grad():
        alone_rows = stack.full.get_image_features(
            alone["pixel_values"], alone["image_sizes"], batch_num_images=alone["batch_num_images"]
        ).pooler_output
        together_rows = stack.full.get_image_features(
            together["pixel_values"], together["image_sizes"], batch_num_images=together["batch_num_images"]
        ).pooler_output
    records = [torch.cat(pair) for pair in zip(alone_rows, together_rows, strict=True)]
    await parity.records_round_trip(stack, (WIDE, SQUARE), records)
