"""One-off generation through ``Gateway`` and ``Pipeline`` against a fake downstream: the stream
and its final usage, one Encode per request, the NOT_FOUND -> inline retry, readiness, the
text-only refusal, the deadline cap, and how downstream statuses become domain errors."""

from __future__ import annotations

import base64
from dataclasses import replace

import grpc
import pytest
from grpc import aio

from gateway.deadline import Deadline
from gateway.downstream import map_rpc_error
from gateway.messages import Chunk, ImageInput, ImageRef, ImageSource, Message, Part, Sampling, Usage
from gateway.pipeline import TEXT_ONLY_MESSAGE
from gateway.service import Gateway
from tandem.errors import (
    GENERIC_INTERNAL_MESSAGE,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    Overloaded,
    TandemError,
    Unavailable,
)
from tests.support.fake_downstream import MAX_IMAGES, FakeDownstream, chunks_of, gateway_over, image_id

PNG_A = b"\x89PNG\r\n\x1a\nimage-a"
PNG_B = b"\x89PNG\r\n\x1a\nimage-b"
SECRET = "db-7.internal.example:6379"
DEFAULTS = Sampling()  # every field 0: the services' defaults


def user(*parts: Part) -> Message:
    return Message("user", parts)


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


async def answer(gateway: Gateway, *messages: Message, sampling: Sampling = DEFAULTS) -> list[Chunk]:
    return await chunks_of(gateway.generate(messages, sampling, "", Deadline()))


async def test_one_off_generation_streams_the_answer_then_usage_and_finish(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    system = Message("system", ("be brief",))
    stream = gateway.generate(
        [system, user(ImageSource(data=PNG_A), "describe")], Sampling(), "r-1", Deadline()
    )
    chunks = await chunks_of(stream)
    assert [(c.text, c.token_ids, c.finish_reason) for c in chunks] == [
        ("u1", (0,), None),
        (".", (1,), None),
        (".", (2,), None),
        ("", (), "stop"),
    ]
    assert chunks[-1].usage == Usage(prompt_tokens=10, image_tokens=4, completion_tokens=3)
    assert all(c.usage is None for c in chunks[:-1]) and not any(c.replayed for c in chunks)
    assert chunks[0].image_ids == (image_id(PNG_A),) and all(not c.image_ids for c in chunks[1:])
    (sent,) = downstream.generations
    assert sent.messages == (system, user(ImageRef(image_id(PNG_A), 4), "describe"))
    assert sent.request_id == "r-1" and sent.session_id == ""
    assert sent.sampling == Sampling()  # as sent: the language service fits max_new_tokens


async def test_sampling_is_passed_on_and_each_request_gets_its_own_id(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    sampling = Sampling(max_new_tokens=5, temperature=0.7, stop=("\n",))
    await answer(gateway, user("hi"), sampling=sampling)
    await answer(gateway, user("hi"), sampling=sampling)
    first, second = downstream.generations
    assert first.sampling == sampling and second.sampling == sampling
    assert first.request_id and second.request_id and first.request_id != second.request_id
    assert not downstream.encodes  # no image, no Encode call


async def test_images_of_a_request_are_encoded_once_in_one_call(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    conversation = [
        user(ImageSource(data=PNG_A), "one"),
        Message("assistant", ("u1..",)),
        user(ImageSource(url=data_uri(PNG_B)), "two", ImageSource(data=PNG_A)),
    ]
    chunks = await answer(gateway, *conversation)
    ((inputs, force_inline),) = downstream.encodes
    assert inputs == (
        ImageInput(data=PNG_A),
        ImageInput(data=PNG_B, media_type="image/png"),
        ImageInput(data=PNG_A),
    )
    assert not force_inline
    ids = (image_id(PNG_A), image_id(PNG_B), image_id(PNG_A))
    assert chunks[0].image_ids == ids and chunks[-1].usage == Usage(10, 12, 3)
    sent = downstream.generations[0].messages
    assert [p.image_id for m in sent for p in m.parts if isinstance(p, ImageRef)] == list(ids)
    assert sent[2].parts[1] == "two"


async def test_an_earlier_image_id_is_sent_as_an_id(gateway: Gateway, downstream: FakeDownstream) -> None:
    await answer(gateway, user(ImageSource(data=PNG_A)))
    again = await answer(gateway, user(ImageSource(image_id=image_id(PNG_A)), "again"))
    assert downstream.encodes[-1] == ((ImageInput(image_id=image_id(PNG_A)),), False)
    assert again[0].image_ids == (image_id(PNG_A),)
    with pytest.raises(NotFound, match="send the image"):
        await answer(gateway, user(ImageSource(image_id="0" * 64)))
    with pytest.raises(InvalidInput, match="64-hex-digit"):
        await answer(gateway, user(ImageSource(image_id="not-an-id")))
    assert len(downstream.generations) == 2


async def test_an_evicted_embedding_is_encoded_again_inline_and_retried_once(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    downstream.evicted.add(image_id(PNG_A))
    chunks = await answer(gateway, user(ImageSource(data=PNG_A), "hi"))
    assert "".join(c.text for c in chunks) == "u1.." and chunks[-1].finish_reason == "stop"
    assert chunks[0].image_ids == (image_id(PNG_A),)
    assert [force for _, force in downstream.encodes] == [False, True]
    first, retry = downstream.generations
    assert [p.inline_record for p in first.messages[0].parts if isinstance(p, ImageRef)] == [b""]
    assert [p.inline_record for p in retry.messages[0].parts if isinstance(p, ImageRef)] == [b"embedding"]
    assert retry.request_id == first.request_id


async def test_not_found_is_not_retried_after_output_or_without_images(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    downstream.fail_after_first = NotFound("embedding not in the cache")
    seen: list[str] = []
    with pytest.raises(NotFound):
        async for chunk in gateway.generate([user(ImageSource(data=PNG_A))], Sampling(), "", Deadline()):
            seen.append(chunk.text)
    assert seen == ["u1"] and len(downstream.encodes) == 1 and len(downstream.generations) == 1
    downstream.fail_after_first, downstream.fail = None, NotFound("no such thing")
    with pytest.raises(NotFound, match="no such thing"):
        await answer(gateway, user("text only"))
    assert len(downstream.encodes) == 1 and len(downstream.generations) == 2


async def test_a_text_only_model_refuses_images_before_any_downstream_call(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    gateway.pipeline.model = replace(downstream.model, is_vlm=False)
    with pytest.raises(InvalidInput) as refused:
        await answer(gateway, user("hi", ImageSource(data=PNG_A)))
    assert str(refused.value) == TEXT_ONLY_MESSAGE
    assert not downstream.encodes and not downstream.generations
    assert "".join(c.text for c in await answer(gateway, user("hi"))) == "u1.."


async def test_nothing_is_served_until_the_model_is_known(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    gateway.pipeline.model = None
    with pytest.raises(Unavailable, match="still starting"):
        gateway.model_info()
    with pytest.raises(Unavailable, match="still starting"):
        await answer(gateway, user("hi"))
    assert not downstream.generations
    gateway.pipeline.model = await downstream.language_info(timeout=1.0)
    assert gateway.model_info() == downstream.model


async def test_requests_past_the_limits_are_refused_before_any_downstream_call(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    with pytest.raises(InvalidInput, match="conversation is empty"):
        await answer(gateway)
    many = [ImageSource(data=bytes([i]) * 8) for i in range(MAX_IMAGES + 1)]
    with pytest.raises(InvalidInput, match=f"too many images: {MAX_IMAGES + 1}"):
        await answer(gateway, user(*many))
    assert not downstream.encodes and not downstream.generations


async def test_a_request_without_a_deadline_gets_the_server_cap(downstream: FakeDownstream) -> None:
    gateway = gateway_over(downstream, max_request_seconds=30)
    await answer(gateway, user("hi"))
    await chunks_of(gateway.generate([user("hi")], Sampling(), "", Deadline.after(2)))
    uncapped, tighter = (g.deadline.remaining() or 0 for g in downstream.generations)
    assert 29 < uncapped <= 30 and 1 < tighter <= 2


@pytest.mark.parametrize(
    "error",
    [
        InvalidInput("prompt too long"),
        Overloaded("queue full; retry later"),
        Unavailable("the language service is unavailable; retry later"),
        DeadlineExceeded("deadline exceeded while waiting for the language service"),
        TandemError(GENERIC_INTERNAL_MESSAGE),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_downstream_domain_errors_reach_the_caller_as_they_are(
    gateway: Gateway, downstream: FakeDownstream, error: TandemError
) -> None:
    downstream.fail = error
    with pytest.raises(TandemError) as raised:
        await answer(gateway, user(ImageSource(data=PNG_A), "hi"))
    assert raised.value is error and len(downstream.generations) == 1


STATUS_CASES = [
    (grpc.StatusCode.INVALID_ARGUMENT, "prompt too long", InvalidInput, "prompt too long"),
    (grpc.StatusCode.INVALID_ARGUMENT, "", InvalidInput, "invalid_argument"),
    (grpc.StatusCode.NOT_FOUND, "embedding not in the cache", NotFound, "embedding not in the cache"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full; retry later", Overloaded, "queue full; retry later"),
    (grpc.StatusCode.UNAVAILABLE, SECRET, Unavailable, "the language service is unavailable; retry later"),
    (grpc.StatusCode.CANCELLED, SECRET, Unavailable, "the language service is unavailable; retry later"),
    (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        SECRET,
        DeadlineExceeded,
        "deadline exceeded while waiting for the language service",
    ),
    (grpc.StatusCode.INTERNAL, SECRET, TandemError, GENERIC_INTERNAL_MESSAGE),
    (grpc.StatusCode.UNKNOWN, SECRET, TandemError, GENERIC_INTERNAL_MESSAGE),
    (grpc.StatusCode.FAILED_PRECONDITION, SECRET, TandemError, GENERIC_INTERNAL_MESSAGE),
]


@pytest.mark.parametrize(
    ("status", "details", "kind", "message"),
    STATUS_CASES,
    ids=[f"{c[0].name}-{c[2].__name__}" for c in STATUS_CASES],
)
def test_downstream_statuses_become_domain_errors_with_safe_messages(
    status: grpc.StatusCode, details: str, kind: type[TandemError], message: str
) -> None:
    failed = aio.AioRpcError(status, aio.Metadata(), aio.Metadata(), details, debug_error_string=None)
    error = map_rpc_error(failed, "language")
    assert type(error) is kind and str(error) == message
    assert error.code == (grpc.StatusCode.INTERNAL if kind is TandemError else kind.code)
