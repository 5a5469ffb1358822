"""Slow and greedy HTTP clients (issue 11, findings 8 and 10): a client that trickles its headers
or its body is cut after the read timeout (408 once its headers are in), and request bodies in
flight are capped (429 past the budget), over a fake ``Gateway``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from gateway.inflight import InflightBytes
from gateway.openai_http import HttpOptions, OpenAIHttpServer
from tandem.errors import Overloaded
from tests.unit.gateway.test_openai_fake import MODEL, FakeGateway

READ_TIMEOUT = 1.0
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
async def port() -> AsyncIterator[int]:
    options = HttpOptions(port=0, max_body_bytes=64 * 1024, read_timeout_seconds=READ_TIMEOUT)
    server = OpenAIHttpServer(FakeGateway(), options, inflight=InflightBytes(100 * 1024, wait_seconds=0.2))  # type: ignore[arg-type]
    try:
        yield await server.start()
    finally:
        await server.stop()


def _head(length: int) -> bytes:
    return (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every: float, stop: asyncio.Event) -> None:
    """Send ``data`` one byte at a time, ``every`` seconds apart, until the server hangs up."""
    for i in range(len(data)):
        if stop.is_set():
            return
        try:
            writer.write(data[i : i + 1])
            await writer.drain()
        except ConnectionError:
            return
        await asyncio.sleep(every)


async def _until_closed(reader: asyncio.StreamReader, limit: float) -> tuple[bytes, float]:
    """What the server sent before it closed the connection, and how long that took."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        data = await reader.read()  # to EOF
    return data, time.monotonic() - started


async def _trickled(port: int, at_once: bytes, one_by_one: bytes) -> tuple[bytes, float]:
    """Send ``at_once``, then ``one_by_one`` a byte every 0.1 s: what the server sent before it
    closed the connection, and how long that took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(at_once)
    stop = asyncio.Event()
    trickle = asyncio.create_task(_trickle(writer, one_by_one, 0.1, stop))
    try:
        return await _until_closed(reader, 10 * READ_TIMEOUT)
    finally:
        stop.set()
        await trickle
        writer.close()


async def test_a_body_sent_one_byte_at_a_time_is_cut_with_408(port: int) -> None:
    data, took = await _trickled(port, _head(len(BODY)), BODY)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"did not arrive within 1 s" in data
    assert READ_TIMEOUT * 0.9 <= took < READ_TIMEOUT * 4


async def test_headers_sent_one_byte_at_a_time_are_cut(port: int) -> None:
    data, took = await _trickled(port, b"", _head(len(BODY)))
    assert data == b"" and took < READ_TIMEOUT * 4  # closed without an answer


async def test_a_prompt_client_is_not_cut(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head(len(BODY)) + BODY)
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200")


async def test_bodies_in_flight_are_capped_with_429(port: int) -> None:
    """Two 60 KiB bodies announced at once: the first holds its bytes while it trickles in, the
    second does not fit in the 100 KiB budget and is refused; once the first is done, it fits."""
    size = 60 * 1024
    _, slow = await asyncio.open_connection("127.0.0.1", port)
    slow.write(_head(size))  # headers only: its body never comes
    await slow.drain()
    await asyncio.sleep(0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head(size) + b" " * size)
    await writer.drain()
    answer, _ = await _until_closed(reader, 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
    assert b"--max-inflight-bytes" in answer
    slow.close()
    await asyncio.sleep(0.3)  # the server notices the hang-up and gives the bytes back
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    padded = BODY + b" " * (size - len(BODY))
    writer.write(_head(size) + padded)
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200")


async def test_the_budget_waits_briefly_then_refuses() -> None:
    budget = InflightBytes(100, wait_seconds=0.2)
    async with budget.hold(80):
        with pytest.raises(Overloaded, match="max-inflight-bytes"):
            async with budget.hold(30):
                pass
        assert budget.used == 80

        async def later() -> None:
            async with budget.hold(30):
                assert budget.used <= 100

        waiting = asyncio.create_task(later())
        await asyncio.sleep(0.05)
    await asyncio.wait_for(waiting, 1)  # admitted once the 80 bytes were given back
    assert budget.used == 0
    with pytest.raises(Overloaded):
        async with budget.hold(101):  # never fits
            pass
