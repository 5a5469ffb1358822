"""The Python pipeline against a live gateway (real services, real Redis, tiny LLaVA).

Answers are greedy, so two forms of the same request must give the same text: that is how
every prompt and image form is checked to reach the model as the same conversation.
"""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tandem import AsyncPipeline, GenerationConfig, Pipeline, pipeline
from tandem.client import ImageId, InvalidArgument, NotFound, Unauthenticated
from tests.support.client_stack import TOKEN, Stack

pytestmark = pytest.mark.slow

GREEDY = GenerationConfig(max_new_tokens=6)
PROMPT = "Describe the image."


def _png(color: str, stripes: str) -> bytes:
    image = Image.new("RGB", (48, 40), color)
    for x in range(0, 48, 8):
        image.paste(stripes, (x, 0, x + 3, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Images:
    red: bytes
    blue: bytes
    red_path: Path

    @property
    def red_data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.red).decode()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    red = _png("red", "white")
    path = tmp_path_factory.mktemp("images") / "red.png"
    path.write_bytes(red)
    return Images(red, _png("blue", "yellow"), path)


@pytest.fixture(scope="module")
def pipe(client_stack: Stack) -> Iterator[Pipeline]:
    with pipeline(client_stack.open.grpc, gen_config=GREEDY, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def baseline(pipe: Pipeline, images: Images) -> tuple[str, str]:
    """The greedy answer about the red image, and its image id."""
    answer = pipe((PROMPT, images.red))
    assert answer.finish_reason in ("stop", "length") and answer.text
    return answer.text, answer.image_ids[0]


class ImageServer:
    """A local http server serving the red image and counting requests."""

    def __init__(self, body: bytes):
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/red.png"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def image_server(images: Images) -> Iterator[ImageServer]:
    server = ImageServer(images.red)
    try:
        yield server
    finally:
        server.close()


def test_every_image_form_gives_the_same_answer(
    pipe: Pipeline, images: Images, baseline: tuple[str, str]
) -> None:
    text, image_id = baseline
    same_bytes = [
        str(images.red_path),
        images.red_path,
        images.red_path.as_uri(),
        images.red_data_uri,
        images.red,
    ]
    answers = pipe([(PROMPT, form) for form in same_bytes])
    assert [a.text for a in answers] == [text] * len(same_bytes)
    assert {a.image_ids[0] for a in answers} == {image_id}  # one image, one id, one cache entry
    pil = pipe((PROMPT, Image.open(io.BytesIO(images.red))))
    assert pil.text == text  # re-encoded as PNG by the client: same pixels, same answer
    again = pipe((PROMPT, ImageId(image_id)))
    assert again.text == text and again.usage is not None and again.usage.image_tokens == 16


def test_prompt_forms_reach_the_model_as_the_same_conversation(
    pipe: Pipeline, images: Images, baseline: tuple[str, str]
) -> None:
    text, _ = baseline
    image_part = {"type": "image_url", "image_url": {"url": images.red_data_uri, "detail": "high"}}
    forms: list[Any] = [
        (images.red, PROMPT),  # image-first tuple
        [{"role": "user", "content": [image_part, {"type": "text", "text": PROMPT}]}],
        [{"type": "image", "image": images.red}, {"type": "text", "text": PROMPT}],
    ]
    assert [pipe(form).text for form in forms] == [text] * len(forms)


def test_two_images_and_a_conversation(pipe: Pipeline, images: Images) -> None:
    both = pipe(("Compare the two images.", [images.red, images.blue]))
    assert both.usage is not None and both.usage.image_tokens == 32 and len(both.image_ids) == 2
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "What now?"},
    ]
    answer = pipe(messages)
    assert answer.text and answer.usage is not None and answer.usage.image_tokens == 0


def test_batch_keeps_prompt_order(pipe: Pipeline, images: Images) -> None:
    prompts: list[str | tuple[str, bytes]] = [
        "Hello there",
        (PROMPT, images.blue),
        "A different question",
        (PROMPT, images.red),
    ]
    one_by_one = [pipe(p).text for p in prompts]
    batch = pipe(prompts)
    assert [a.text for a in batch] == one_by_one
    assert [a.index for a in batch] == [0, 1, 2, 3]
    assert len(set(one_by_one)) > 1  # the order check can fail


def test_stream_infer(pipe: Pipeline, images: Images, baseline: tuple[str, str]) -> None:
    chunks = list(pipe.stream_infer((PROMPT, images.red)))
    assert len(chunks) >= 2
    assert "".join(c.text for c in chunks) == baseline[0]
    assert chunks[0].image_ids == [baseline[1]]
    assert chunks[-1].finish_reason is not None and chunks[-1].usage is not None


def test_three_turn_chat_shared_by_id(pipe: Pipeline, images: Images, client_stack: Stack) -> None:
    sess = pipe.chat((PROMPT, images.red))
    assert sess.response is not None and sess.response.text
    first_images = sess.response.image_ids
    sess = pipe.chat("Say more.", session=sess)
    with pipeline(client_stack.open.grpc, gen_config=GREEDY) as other:  # e.g. another process
        third = other.chat("And finally?", session=sess.session_id)
        assert third.session_id == sess.session_id and third.response is not None
    history = sess.history
    assert [m.role for m in history] == ["user", "assistant"] * 3
    assert history[0].image_ids == first_images and len(first_images) == 1
    assert history[5].text == third.response.text
    sess.close()
    with pytest.raises(NotFound):
        pipe.chat("gone?", session=sess)


def test_typed_errors(pipe: Pipeline, client_stack: Stack) -> None:
    with pytest.raises(NotFound) as unknown:
        pipe.chat("hi", session="0" * 32)
    assert "session" in unknown.value.details
    with pytest.raises(InvalidArgument) as bad:
        pipe(("describe", b"this is not an image"))
    assert bad.value.details
    with pipeline(client_stack.guarded.grpc) as no_token, pytest.raises(Unauthenticated):
        no_token("hi")


def test_private_url_is_refused_by_default(pipe: Pipeline, image_server: ImageServer) -> None:
    with pytest.raises(InvalidArgument):
        pipe((PROMPT, image_server.url))
    assert image_server.hits == 0


def test_url_is_fetched_when_private_urls_are_allowed(
    client_stack: Stack, image_server: ImageServer, baseline: tuple[str, str]
) -> None:
    with pipeline(client_stack.guarded.grpc, gen_config=GREEDY, token=TOKEN) as guarded:
        answer = guarded((PROMPT, image_server.url))
    assert image_server.hits >= 1
    assert (answer.text, answer.image_ids) == (baseline[0], [baseline[1]])


async def test_async_pipeline(client_stack: Stack, images: Images, baseline: tuple[str, str]) -> None:
    async with AsyncPipeline(client_stack.open.grpc, gen_config=GREEDY) as apipe:
        assert (await apipe((PROMPT, images.red))).text == baseline[0]
        texts = [chunk.text async for chunk in apipe.stream_infer((PROMPT, images.red))]
        assert "".join(texts) == baseline[0]
        sess = await apipe.chat("Hello")
        sess = await apipe.chat("Again", session=sess)
        assert len(await sess.get_history()) == 4
        await sess.close()
