"""Exactly-once turns on the domain (fake downstream, in-memory store): a commit whose answer is
lost is settled before the client hears anything, so the client learns the truth; a retry under
the same request id must repeat the same turn, or it is refused instead of replayed."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from gateway.deadline import Deadline
from gateway.messages import Chunk, ImageSource, Part, Sampling
from gateway.service import Gateway
from gateway.session_memory import MemorySessionStore
from gateway.sessions import (
    REUSED_REQUEST_ID,
    CommitResult,
    SessionSettings,
    SessionState,
    StoreTimeout,
    input_digest,
)
from tandem.errors import PreconditionFailed, Unavailable
from tests.support.fake_downstream import FakeDownstream, chunks_of

PNG_A = b"\x89PNG\r\n\x1a\nimage-a"


class LostAnswerStore(MemorySessionStore):
    """A store whose commits time out: the write ``lands`` (or not), the answer never comes."""

    def __init__(self, lands: bool, unreachable_settles: int = 0) -> None:
        super().__init__()
        self.lands = lands
        self.unreachable_settles = unreachable_settles
        self.lost: list[tuple[SessionState, str, str]] = []

    async def commit(self, state: SessionState, version: str, fence: str = "") -> CommitResult:
        if self.lands:
            await super().commit(state, version, fence)
        else:
            self.lost.append((state, version, fence))  # still on its way, as in a paused Redis
        raise StoreTimeout("the session store is unavailable; retry later")

    async def settle(self, session_id: str, fence: str) -> SessionState | None:
        if self.unreachable_settles:
            self.unreachable_settles -= 1
            raise StoreTimeout("the session store is unavailable; retry later")
        return await super().settle(session_id, fence)


GREEDY = Sampling()


def chat(
    gateway: Gateway, sid: str, *parts: Part, request_id: str = "", sampling: Sampling = GREEDY
) -> Awaitable[list[Chunk]]:
    return chunks_of(gateway.chat(sid, parts, sampling, request_id, Deadline()))


async def test_a_commit_that_landed_is_reported_as_saved(gateway: Gateway) -> None:
    gateway.sessions.store = LostAnswerStore(lands=True, unreachable_settles=2)
    sid = (await gateway.create_session("", 0)).session_id
    chunks = await chat(gateway, sid, "hello")  # no request id: the OpenAI SDK's default
    assert chunks[-1].finish_reason == "stop"
    assert len((await gateway.get_session(sid)).messages) == 2  # saved once; no retry adds it again


async def test_a_commit_that_did_not_land_is_unavailable_and_never_lands_later(gateway: Gateway) -> None:
    store = gateway.sessions.store = LostAnswerStore(lands=False)
    sid = (await gateway.create_session("", 0)).session_id
    with pytest.raises(Unavailable, match="not saved"):
        await chat(gateway, sid, "hello", request_id="r1")
    assert (await gateway.get_session(sid)).messages == ()
    state, version, fence = store.lost[0]  # the write arrives after all: refused
    assert await MemorySessionStore.commit(store, state, version, fence) == "fenced"
    assert (await gateway.get_session(sid)).messages == ()


async def test_a_store_that_never_answers_says_the_outcome_is_unknown(gateway: Gateway) -> None:
    gateway.sessions.settings = SessionSettings(lock_seconds=0.3)
    gateway.sessions.store = LostAnswerStore(lands=False, unreachable_settles=1000)
    sid = (await gateway.create_session("", 0)).session_id
    with pytest.raises(Unavailable, match="read the session"):
        await chat(gateway, sid, "hello")


async def test_a_store_that_is_down_wrote_nothing_and_is_not_waited_for(gateway: Gateway) -> None:
    class DownStore(LostAnswerStore):
        async def commit(self, state: SessionState, version: str, fence: str = "") -> CommitResult:
            raise Unavailable("the session store is unavailable; retry later")  # connection refused

    store = gateway.sessions.store = DownStore(lands=False, unreachable_settles=1000)
    sid = (await gateway.create_session("", 0)).session_id
    with pytest.raises(Unavailable, match="session store is unavailable"):
        await chat(gateway, sid, "hello")
    assert store.unreachable_settles == 1000  # no settling: nothing can have been written


async def test_a_retry_replays_only_the_same_turn(gateway: Gateway, downstream: FakeDownstream) -> None:
    sid = (await gateway.create_session("", 0)).session_id
    first = await chat(gateway, sid, ImageSource(data=PNG_A), "what is it?", request_id="r1")
    again = await chat(gateway, sid, ImageSource(data=PNG_A), "what is it?", request_id="r1")
    assert again[0].replayed and again[0].text == "".join(c.text for c in first)
    for parts, sampling in [
        (("what is it now?",), Sampling()),
        ((ImageSource(data=b"\x89PNG\r\n\x1a\nimage-b"), "what is it?"), Sampling()),
        ((ImageSource(data=PNG_A), "what is it?"), Sampling(temperature=0.7)),
    ]:
        with pytest.raises(PreconditionFailed, match="another input"):
            await chat(gateway, sid, *parts, request_id="r1", sampling=sampling)
    assert len(downstream.generations) == 1
    assert len((await gateway.get_session(sid)).messages) == 2


def test_the_input_digest_covers_parts_and_sampling() -> None:
    base = input_digest(("hi", ImageSource(data=PNG_A)), Sampling())
    assert base == input_digest(("hi", ImageSource(data=PNG_A)), Sampling())
    others = [
        input_digest(("hi",), Sampling()),
        input_digest(("hi", ImageSource(url="https://example.com/a.png")), Sampling()),
        input_digest(("hi", ImageSource(image_id="ab" * 32)), Sampling()),
        input_digest(("hi", ImageSource(data=PNG_A)), Sampling(seed=1)),
        input_digest((ImageSource(data=PNG_A), "hi"), Sampling()),
    ]
    assert len({base, *others}) == 6
    assert "request id" in REUSED_REQUEST_ID
