"""One-off generation through the real gateway (gRPC, Redis) over fake vision/language services.

The fakes (support/fake_services.py) record what reached them, so these tests check the wiring:
one Encode per request, images resolved by id, the per-call split, the server's deadline cap,
NOT_FOUND -> force_inline retry, a text-only model, and status mapping with safe messages
(TESTPLAN 1, 2, 22).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from vlm.v1 import common_pb2, gateway_pb2

from tests.support.fake_services import idle, sha
from tests.support.fake_system import (
    PNG_A,
    PNG_B,
    StartSystem,
    answer_of,
    collect,
    data_uri,
    image,
    status_of,
    text,
    user,
)
from tests.support.waiting import eventually

SECRET = "db-7.internal.example:6379"


async def test_two_images_are_encoded_in_one_call_and_ids_returned(start_system: StartSystem) -> None:
    system = await start_system()
    request = gateway_pb2.GenerateRequest(
        messages=[user(image(data=PNG_A), text("compare"), image(url=data_uri(PNG_B)))]
    )
    responses = await collect(system.stub.Generate(request, timeout=5))
    assert answer_of(responses) == "u1.." and responses[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    assert list(responses[0].image_ids) == [sha(PNG_A), sha(PNG_B)]
    assert all(not r.image_ids for r in responses[1:])
    assert responses[-1].usage.image_tokens == 8
    (call,) = system.vision.calls
    assert [i.data for i in call.images] == [PNG_A, PNG_B] and not call.force_inline
    (sent,) = system.llm.requests
    kinds = [p.WhichOneof("kind") for p in sent.messages[0].parts]
    assert kinds == ["image", "text", "image"] and sent.session_id == ""
    assert sent.sampling.max_new_tokens == 0  # unset: the language service fits it to the context
    assert 0 < (system.llm.timeouts[0] or 0) <= 5.1 and 0 < (system.vision.timeouts[0] or 0) <= 5.1


async def test_image_id_from_an_earlier_response_is_resolved(start_system: StartSystem) -> None:
    system = await start_system()
    first = await collect(
        system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(image(data=PNG_A))]))
    )
    image_id = first[0].image_ids[0]
    again = gateway_pb2.GenerateRequest(messages=[user(image(image_id=image_id), text("again"))])
    responses = await collect(system.stub.Generate(again))
    assert list(responses[0].image_ids) == [image_id]
    assert system.vision.calls[-1].images[0].image_id == image_id
    unknown = gateway_pb2.GenerateRequest(messages=[user(image(image_id="0" * 64))])
    assert (await status_of(system.stub.Generate(unknown)))[0] == grpc.StatusCode.NOT_FOUND


async def test_images_past_the_per_call_limit_are_split_in_order(start_system: StartSystem) -> None:
    system = await start_system(max_images_per_encode=2)
    pngs = [PNG_A, PNG_B, b"\x89PNG\r\n\x1a\nimage-c"]
    request = gateway_pb2.GenerateRequest(messages=[user(*[image(data=p) for p in pngs])])
    responses = await collect(system.stub.Generate(request))
    assert list(responses[0].image_ids) == [sha(p) for p in pngs]
    assert sorted(len(c.images) for c in system.vision.calls) == [1, 2]
    sent = [p.image.image_id for p in system.llm.requests[0].messages[0].parts]
    assert sent == [sha(p) for p in pngs]


async def test_requests_without_a_deadline_get_the_server_cap(start_system: StartSystem) -> None:
    system = await start_system(max_request_seconds=30)
    await collect(system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))])))
    assert 25 < (system.llm.timeouts[0] or 0) <= 30.2  # grpc rounds timeouts up slightly


async def test_an_answer_ends_at_its_final_message_without_waiting_for_the_replica(
    start_system: StartSystem,
) -> None:
    """The replica holds its call open after the final message: the client's answer is whole and
    OK all the same, and the replica's call then ends OK (read, not cancelled)."""
    system = await start_system()
    system.llm.hold_after_answer = asyncio.Event()
    call = system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))]), timeout=30)
    responses = await asyncio.wait_for(collect(call), 20)
    assert answer_of(responses) == "u1.." and await call.code() == grpc.StatusCode.OK
    assert system.llm.ended == []  # still held
    system.llm.hold_after_answer.set()
    assert await idle(system.llm)
    assert system.llm.ended == ["OK"] and system.llm.cancelled == 0


async def test_a_replica_failing_after_a_whole_answer_is_logged(
    start_system: StartSystem, caplog: pytest.LogCaptureFixture
) -> None:
    system = await start_system()
    system.llm.fail_after_answer = (grpc.StatusCode.INTERNAL, "kv store failed")
    responses = await collect(system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))])))
    assert answer_of(responses) == "u1.." and responses[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    logged = "then ended the call with INTERNAL: kv store failed"
    await eventually(lambda: any(logged in r.getMessage() for r in caplog.records))
    assert system.llm.ended == ["INTERNAL"]


async def test_evicted_embedding_is_reencoded_inline_once(start_system: StartSystem) -> None:
    system = await start_system()
    system.llm.evicted.add(sha(PNG_A))
    responses = await collect(
        system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(image(data=PNG_A))]))
    )
    assert answer_of(responses) == "u1.."
    assert [c.force_inline for c in system.vision.calls] == [False, True]
    assert len(system.llm.requests) == 2


async def test_text_only_model_refuses_images(start_system: StartSystem) -> None:
    system = await start_system(is_vlm=False)
    info = await system.stub.GetModelInfo(gateway_pb2.GetModelInfoRequest())
    assert not info.info.is_vlm and info.info.model == "fake"
    request = gateway_pb2.GenerateRequest(messages=[user(text("hi"), image(data=PNG_A))])
    code, message = await status_of(system.stub.Generate(request))
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT
        and message == "this model is text-only; remove the image parts"
    )
    ok = await collect(system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))])))
    assert answer_of(ok) == "u1.." and not system.vision.calls


STATUS_CASES = [
    ("bad base64", dict(url="data:image/png;base64,@@@"), None, grpc.StatusCode.INVALID_ARGUMENT, "base64"),
    (
        "blocked url",
        dict(url="http://127.0.0.1:1/x.png"),
        None,
        grpc.StatusCode.INVALID_ARGUMENT,
        "non-public",
    ),
    ("file url", dict(url="file:///etc/passwd"), None, grpc.StatusCode.INVALID_ARGUMENT, "http or https"),
    (
        "llm invalid",
        dict(data=PNG_A),
        (grpc.StatusCode.INVALID_ARGUMENT, "prompt too long"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt too long",
    ),
    (
        "llm overload",
        dict(data=PNG_A),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full; retry later"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "queue full",
    ),
    (
        "llm bug",
        dict(data=PNG_A),
        (grpc.StatusCode.INTERNAL, SECRET),
        grpc.StatusCode.INTERNAL,
        "internal error",
    ),
    (
        "llm down",
        dict(data=PNG_A),
        (grpc.StatusCode.UNAVAILABLE, SECRET),
        grpc.StatusCode.UNAVAILABLE,
        "language service is unavailable",
    ),
]


@pytest.mark.parametrize(
    ("case", "source", "fail", "code", "message"), STATUS_CASES, ids=[c[0] for c in STATUS_CASES]
)
async def test_status_codes_and_safe_messages(
    start_system: StartSystem,
    case: str,
    source: dict[str, Any],
    fail: Any,
    code: grpc.StatusCode,
    message: str,
) -> None:
    system = await start_system()
    system.llm.fail = fail
    request = gateway_pb2.GenerateRequest(messages=[user(image(**source), text("hi"))])
    got, details = await status_of(system.stub.Generate(request, timeout=5))
    assert got == code and message in details
    assert SECRET not in details and "Traceback" not in details and "127.0.0.1" not in details


async def test_malformed_requests_are_invalid_argument(start_system: StartSystem) -> None:
    system = await start_system()
    bad = [
        gateway_pb2.GenerateRequest(),
        gateway_pb2.GenerateRequest(messages=[gateway_pb2.ChatMessage(parts=[text("no role")])]),
        gateway_pb2.GenerateRequest(messages=[user(gateway_pb2.Part())]),
        gateway_pb2.GenerateRequest(messages=[user(image())]),
        gateway_pb2.GenerateRequest(messages=[user(image(data=PNG_A))] * 9),
    ]
    for request in bad:
        assert (await status_of(system.stub.Generate(request)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert not system.llm.requests
