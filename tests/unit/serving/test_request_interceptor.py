"""The request interceptor's initial metadata: sent while the handler already works, but always
before anything else goes out on the call (a response, ``write``, ``abort``, the status)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import grpc
import pytest
from grpc import aio

from tandem.metrics import Metrics
from tandem.serving.request_interceptor import RequestInterceptor
from tandem.serving.tracing import Tracing


class Details(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


DETAILS: Any = Details("/test.Service/Method", (("x-request-id", "req-1"),))


class SlowContext:
    """A servicer context whose initial metadata leaves only when ``release`` is set; every send
    is recorded in ``wire`` (the order a client would see)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.wire: list[str] = []
        self.done_callbacks: list[Any] = []

    def add_done_callback(self, callback: Any) -> None:
        self.done_callbacks.append(callback)

    async def send_initial_metadata(self, metadata: Any) -> None:
        await self.release.wait()
        self.wire.append(f"metadata {dict(metadata)['x-request-id']}")

    async def write(self, message: Any) -> None:
        self.wire.append(f"write {message}")

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self.wire.append(f"abort {code.name}")
        raise aio.AbortError()

    def code(self) -> Any:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def _interceptor() -> RequestInterceptor:
    return RequestInterceptor(Metrics(["grpc"]), Tracing())


async def _released_after_work(context: SlowContext, work: list[str]) -> None:
    """Set ``release`` once the handler did some work: the handler must not wait for it."""
    while not work:
        await asyncio.sleep(0)
    context.release.set()


async def test_a_stream_works_before_its_metadata_left_and_answers_after() -> None:
    context, work = SlowContext(), []

    async def behavior(request: Any, ctx: Any) -> AsyncIterator[str]:
        work.append("started")
        assert ctx.peer() == "ipv4:127.0.0.1:1"  # the rest is the call's own context
        yield "a"
        yield "b"

    handler = _interceptor()._stream(behavior, DETAILS, "server_stream")
    releaser = asyncio.ensure_future(_released_after_work(context, work))
    async for item in handler(object(), context):
        context.wire.append(f"message {item}")
    await releaser
    assert work == ["started"]
    assert context.wire == ["metadata req-1", "message a", "message b"]


async def test_an_abort_waits_for_the_metadata() -> None:
    context, work = SlowContext(), []

    async def behavior(request: Any, ctx: Any) -> AsyncIterator[str]:
        work.append("started")
        await ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad")
        yield "never"

    handler = _interceptor()._stream(behavior, DETAILS, "server_stream")
    releaser = asyncio.ensure_future(_released_after_work(context, work))
    with pytest.raises(aio.AbortError):
        async for _ in handler(object(), context):
            pass
    await releaser
    assert context.wire == ["metadata req-1", "abort INVALID_ARGUMENT"]


async def test_a_unary_answer_and_a_write_wait_for_the_metadata() -> None:
    context, work = SlowContext(), []

    async def behavior(request: Any, ctx: Any) -> str:
        work.append("started")
        await ctx.write("streamed")
        return "answer"

    handler = _interceptor()._unary(behavior, DETAILS, "unary")
    releaser = asyncio.ensure_future(_released_after_work(context, work))
    assert await handler(object(), context) == "answer"
    await releaser
    assert context.wire == ["metadata req-1", "write streamed"]


async def test_a_handler_that_fails_at_once_still_waits_for_the_metadata() -> None:
    """The status of a failed call goes out after the handler: the metadata left before it."""
    context = SlowContext()

    async def behavior(request: Any, ctx: Any) -> str:
        raise RuntimeError("boom")

    handler = _interceptor()._unary(behavior, DETAILS, "unary")
    task = asyncio.ensure_future(handler(object(), context))
    await asyncio.sleep(0.05)
    assert not task.done(), "the handler returned while its metadata was still on its way"
    context.release.set()
    with pytest.raises(RuntimeError):
        await task
    assert context.wire == ["metadata req-1"]


async def test_a_handler_cannot_send_the_metadata_twice() -> None:
    context = SlowContext()
    context.release.set()

    async def behavior(request: Any, ctx: Any) -> str:
        await ctx.send_initial_metadata((("x-request-id", "other"),))
        return "answer"

    handler = _interceptor()._unary(behavior, DETAILS, "unary")
    with pytest.raises(RuntimeError, match="sends the initial metadata"):
        await handler(object(), context)
    assert context.wire == ["metadata req-1"]


async def test_the_access_line_waits_for_grpc_to_be_done(caplog: pytest.LogCaptureFixture) -> None:
    """The status must not wait for a log line: the call is accounted for in its done callback."""
    context = SlowContext()
    context.release.set()

    async def behavior(request: Any, ctx: Any) -> str:
        return "answer"

    handler = _interceptor()._unary(behavior, DETAILS, "unary")
    with caplog.at_level(logging.INFO, logger="tandem.access"):
        assert await handler(object(), context) == "answer"
        assert not [r for r in caplog.records if r.name == "tandem.access"]
        for callback in context.done_callbacks:
            callback(context)
    lines = [r for r in caplog.records if r.name == "tandem.access"]
    assert len(lines) == 1
    assert lines[0].access["status"] == "OK" and lines[0].request_id == "req-1"  # type: ignore[attr-defined]
