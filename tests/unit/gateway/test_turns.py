"""Session turns through ``Gateway.chat`` over a fake downstream and the in-memory session store:
when a turn is committed, what a failed or cancelled turn leaves behind, replayed retries,
refused concurrent turns, and history that keeps image ids (never bytes)."""

from __future__ import annotations

import asyncio
import base64

import pytest

from gateway.deadline import Deadline
from gateway.messages import Chunk, ImageInput, ImageRef, ImageSource, Message, Part, Sampling, Usage
from gateway.service import Gateway
from gateway.sessions import BUSY_MESSAGE
from tandem.errors import Conflict, InvalidInput, NotFound, TandemError, Unavailable
from tests.support.fake_downstream import FakeDownstream, chunks_of, image_id

PNG_A = b"\x89PNG\r\n\x1a\nimage-a"
PNG_B = b"\x89PNG\r\n\x1a\nimage-b"


async def new_session(gateway: Gateway, prompt: str = "") -> str:
    return (await gateway.create_session(prompt, 0)).session_id


def talk(gateway: Gateway, session_id: str, *parts: Part, request_id: str = "") -> asyncio.Task[list[Chunk]]:
    """The whole turn as a task (so a test can run two at once, or cancel one)."""
    stream = gateway.chat(session_id, parts, Sampling(), request_id, Deadline())
    return asyncio.ensure_future(chunks_of(stream))


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


async def started(downstream: FakeDownstream, generations: int) -> None:
    """Wait until ``generations`` generations have reached the downstream."""
    for _ in range(200):
        if len(downstream.generations) >= generations:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{generations} generations never started")


async def test_a_turn_is_committed_just_before_its_final_chunk(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    sid = await new_session(gateway, "be brief")
    seen = []
    async for chunk in gateway.chat(sid, ("hello",), Sampling(), "", Deadline()):
        seen.append((chunk.text, chunk.finish_reason, len((await gateway.get_session(sid)).messages)))
    assert seen == [("u1", None, 1), (".", None, 1), (".", None, 1), ("", "stop", 3)]
    state = await gateway.get_session(sid)
    assert state.messages == (
        Message("system", ("be brief",)),
        Message("user", ("hello",)),
        Message("assistant", ("u1..",)),
    )
    assert state.turns == ()  # no request id: nothing to replay
    assert text_of(await talk(gateway, sid, "more")) == "u2.."
    first, second = downstream.generations
    assert first.session_id == second.session_id == sid
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "user"]


@pytest.mark.parametrize("when", ["before the first chunk", "after the first chunk"])
async def test_a_failed_turn_leaves_the_session_as_it_was(
    gateway: Gateway, downstream: FakeDownstream, when: str
) -> None:
    sid = await new_session(gateway)
    await talk(gateway, sid, "one", request_id="r1")
    before = await gateway.get_session(sid)
    error = Unavailable("the language service is unavailable; retry later")
    if when == "before the first chunk":
        downstream.fail = error
    else:
        downstream.fail_after_first = error
    with pytest.raises(Unavailable) as raised:
        await talk(gateway, sid, "two", request_id="r2")
    assert raised.value is error
    assert await gateway.get_session(sid) == before
    downstream.fail = downstream.fail_after_first = None
    assert text_of(await talk(gateway, sid, "three")) == "u2.."  # the turn lock was released


async def test_a_cancelled_turn_leaves_the_session_as_it_was(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    sid = await new_session(gateway)
    await talk(gateway, sid, "one")
    before = await gateway.get_session(sid)
    stream = gateway.chat(sid, ("two",), Sampling(), "r2", Deadline())
    assert (await anext(stream)).text == "u2"
    await stream.aclose()  # the client went away after the first chunk
    downstream.hold = asyncio.Event()
    running = talk(gateway, sid, "three", request_id="r3")
    await started(downstream, 3)
    running.cancel()  # the handler was cancelled mid-answer
    with pytest.raises(asyncio.CancelledError):
        await running
    assert downstream.closed == 3  # both downstream streams were closed, not left running
    assert await gateway.get_session(sid) == before
    downstream.hold = None
    assert text_of(await talk(gateway, sid, "four")) == "u2.."


async def test_an_answer_that_is_cancelled_or_cut_short_is_not_saved(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    sid = await new_session(gateway)
    downstream.finish = "cancelled"
    chunks = await talk(gateway, sid, "one")
    assert chunks[-1].finish_reason == "cancelled" and text_of(chunks) == "u1.."
    downstream.finish = None  # the stream ends without a final chunk
    with pytest.raises(Unavailable, match="the turn was not saved"):
        await talk(gateway, sid, "two")
    state = await gateway.get_session(sid)
    assert state.messages == () and state.turns == ()


async def test_a_retried_request_id_replays_the_committed_turn(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    sid = await new_session(gateway)
    first = await talk(gateway, sid, ImageSource(data=PNG_A), "hi", request_id="r1")
    again = await talk(gateway, sid, ImageSource(data=PNG_A), "hi", request_id="r1")
    assert not any(c.replayed for c in first)
    assert again == [Chunk("u1..", (0, 1, 2), "stop", Usage(10, 4, 3), (image_id(PNG_A),), replayed=True)]
    assert len(downstream.generations) == 1 and len(downstream.encodes) == 1
    assert len((await gateway.get_session(sid)).messages) == 2
    other = await new_session(gateway)  # request ids are per session
    assert not (await talk(gateway, other, "hi", request_id="r1"))[0].replayed


async def test_concurrent_turns_of_one_session_are_refused_and_never_interleave(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    sid = await new_session(gateway)
    await talk(gateway, sid, "zero", request_id="r0")
    downstream.hold = asyncio.Event()
    first = talk(gateway, sid, "first")
    await started(downstream, 2)
    with pytest.raises(Conflict) as busy:
        await asyncio.wait_for(talk(gateway, sid, "second"), 5)  # refused, not queued
    assert str(busy.value) == BUSY_MESSAGE
    replay = await talk(gateway, sid, "zero", request_id="r0")  # a committed retry does not wait
    assert replay[0].replayed and replay[0].text == "u1.."
    other = talk(gateway, await new_session(gateway), "elsewhere")  # another session runs alongside
    await started(downstream, 3)
    downstream.hold.set()
    assert text_of(await first) == "u2.." and text_of(await other) == "u1.."
    state = await gateway.get_session(sid)
    assert [m.parts for m in state.messages] == [("zero",), ("u1..",), ("first",), ("u2..",)]
    assert len(downstream.generations) == 3  # the refused turn never reached the language service


async def test_history_keeps_image_ids_not_bytes_and_each_turn_encodes_once(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    downstream.inline = True  # the shared cache took nothing: refs carry their embeddings
    a, b = image_id(PNG_A), image_id(PNG_B)
    sid = await new_session(gateway)
    uri = "data:image/png;base64," + base64.b64encode(PNG_B).decode()
    first = await talk(gateway, sid, ImageSource(data=PNG_A), ImageSource(url=uri), "compare")
    assert first[0].image_ids == (a, b)
    assert downstream.encodes == [
        ((ImageInput(data=PNG_A), ImageInput(data=PNG_B, media_type="image/png")), False)
    ]
    sent = downstream.generations[0].messages[-1].parts
    assert [p.inline_record for p in sent if isinstance(p, ImageRef)] == [b"embedding", b"embedding"]
    second = await talk(gateway, sid, ImageSource(image_id=b), "again")
    assert second[0].image_ids == (b,)
    assert downstream.encodes[1] == (
        (ImageInput(image_id=a), ImageInput(image_id=b), ImageInput(image_id=b)),
        False,
    )
    state = await gateway.get_session(sid)
    assert state.messages[0] == Message("user", (ImageRef(a, 4), ImageRef(b, 4), "compare"))
    assert state.messages[2] == Message("user", (ImageRef(b, 4), "again"))
    assert state.image_ids() == [a, b, b]
    assert state.messages[0].parts[0].inline_record == b""  # type: ignore[union-attr]


async def test_unknown_sessions_and_empty_turns_are_refused_before_any_downstream_call(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    for session_id in ("0" * 32, "not-a-session-id"):
        with pytest.raises(NotFound, match="unknown session id"):
            await talk(gateway, session_id, "hi")
    sid = await new_session(gateway)
    with pytest.raises(InvalidInput, match="the turn is empty"):
        await talk(gateway, sid)
    assert not downstream.encodes and not downstream.generations


async def test_a_session_deleted_during_its_turn_is_not_recreated(
    gateway: Gateway, downstream: FakeDownstream
) -> None:
    sid = await new_session(gateway)
    downstream.hold = asyncio.Event()
    running = talk(gateway, sid, "hi")
    await started(downstream, 1)
    await gateway.delete_session(sid)
    downstream.hold.set()
    with pytest.raises(NotFound, match="deleted or expired during this turn"):
        await running
    with pytest.raises(NotFound):
        await gateway.get_session(sid)


@pytest.mark.parametrize("error", [InvalidInput("prompt too long"), NotFound("embedding not in the cache")])
async def test_downstream_errors_of_a_turn_reach_the_caller_as_they_are(
    gateway: Gateway, downstream: FakeDownstream, error: TandemError
) -> None:
    sid = await new_session(gateway)
    downstream.fail = error
    with pytest.raises(TandemError) as raised:
        await talk(gateway, sid, ImageSource(data=PNG_A), "hi")
    assert raised.value is error
    assert (await gateway.get_session(sid)).messages == ()
