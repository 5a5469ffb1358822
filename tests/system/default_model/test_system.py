"""The shipped default model through the running system: vision + llm + gateway, real Redis.

What random weights cannot show: the same held-out questions asked in-process (Hugging Face
``generate``) and through the gateway's gRPC ``Generate`` get the same (right) answers, a
different picture gets the answer that picture calls for, the order of two images matters, and
an embedding read back from Redis answers exactly like a fresh encode.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
import torch
from PIL import Image
from vlm.v1 import vision_pb2, vision_pb2_grpc

from recipes.default_model.data import KINDS, eval_set
from recipes.default_model.evaluate import InProcess, answer_all, score
from recipes.default_model.remote import GatewayAnswerer
from tandem.default_model import CHECKPOINT
from tests.support.pictures import picture

pytestmark = pytest.mark.slow
PREFIX = "clienttest"  # tests.client_stack's cache prefix


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:  # type: ignore[no-untyped-def]
    from tests.support.client_stack import start_stack

    log_dir: Path = tmp_path_factory.mktemp("default-model-stack")
    with start_stack(CHECKPOINT, redis_server.url, log_dir) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(stack) -> Iterator[GatewayAnswerer]:  # type: ignore[no-untyped-def]
    with GatewayAnswerer(stack.open.grpc, concurrency=4) as answerer:
        yield answerer


@pytest.fixture(scope="module")
def local() -> InProcess:
    torch.set_num_threads(1)
    return InProcess(CHECKPOINT)


def ask(gateway: GatewayAnswerer, text: str, *images: object) -> str:
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
    return gateway.ask([{"role": "user", "content": content}], list(images))  # type: ignore[arg-type]


def test_gateway_answers_equal_in_process_answers(gateway: GatewayAnswerer, local: InProcess) -> None:
    samples = eval_set(2024, KINDS, 3)
    in_process = answer_all(samples, local)
    served = answer_all(samples, gateway)
    assert served == in_process
    scores = score(samples, served)
    assert scores["all"]["accuracy"] >= 0.85, scores


def test_a_different_picture_gets_its_own_answer(gateway: GatewayAnswerer) -> None:
    question = "What colour is the star?"
    for colour in ("red", "blue", "green", "yellow"):
        image = picture(("star", colour, 2), ("circle", "purple" if colour != "purple" else "red", 1))
        assert ask(gateway, question, image) == f"The star is {colour}."
    assert (
        ask(gateway, "What shape is this?", picture(("triangle", "orange", 0))) == "It is an orange triangle."
    )
    assert ask(gateway, "What shape is this?", picture(("circle", "orange", 0))) == "It is an orange circle."


def test_image_order_matters(gateway: GatewayAnswerer) -> None:
    red_square = picture(("square", "red", 3))
    other = picture(("circle", "blue", 0), ("square", "green", 1))
    question = "Which image has the red square, the first or the second?"
    assert ask(gateway, question, red_square, other) == "The first image."
    assert ask(gateway, question, other, red_square) == "The second image."


def test_cached_embedding_answers_like_a_fresh_encode(  # type: ignore[no-untyped-def]
    stack, redis_server, gateway: GatewayAnswerer, local: InProcess
) -> None:
    image = picture(("diamond", "yellow", 0), ("star", "green", 3))
    questions = ["What colour is the diamond?", "Where is the star?", "How many shapes are there?"]
    expected = ["The diamond is yellow.", "The star is at the bottom right.", "There are two shapes."]
    store = redis.Redis.from_url(redis_server.url)
    try:
        fresh = []
        for question in questions:
            _forget_embeddings(store)  # so the vision service encodes the image again
            fresh.append(ask(gateway, question, image))
            assert _embeddings(store), "the fresh encode should have stored the embedding"
        assert _vision_says_cached(stack, image), "the last request should have cached the embedding"
        cached = [ask(gateway, question, image) for question in questions]
    finally:
        store.close()
    in_process = [local([(_user(question), [image])])[0] for question in questions]
    assert cached == fresh == in_process == expected


def _user(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _embeddings(store: redis.Redis) -> list[bytes]:
    return list(store.scan_iter(match=f"{PREFIX}:emb:*"))


def _forget_embeddings(store: redis.Redis) -> None:
    keys = _embeddings(store)
    if keys:
        store.delete(*keys)
    assert not _embeddings(store)


def png_bytes(image: Image.Image) -> bytes:
    """The PNG the client sends for ``image`` (so the vision service sees the same bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _vision_says_cached(stack, image: object) -> bool:  # type: ignore[no-untyped-def]
    port = (stack.log_dir / "vision.port").read_text().strip()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = vision_pb2_grpc.VisionServiceStub(channel)
        reply = stub.Encode(vision_pb2.EncodeRequest(images=[vision_pb2.ImageInput(data=png_bytes(image))]))  # type: ignore[arg-type]
    return bool(reply.images[0].cache_hit)
