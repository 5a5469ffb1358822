"""Server-sent events cut at any byte: the same events come out."""

from __future__ import annotations

import pytest

from tandem.bench.sse import SseParser

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"a": 1}\n\n'
    b'data: {"text": "caf\xc3\xa9"}\r\n\r\n'
    b"event: message\ndata: first line\ndata: second line\n\n"
    b"data:no-space\r\r"
    b"data: [DONE]\n\n"
)
EVENTS = ['{"a": 1}', '{"text": "café"}', "first line\nsecond line", "no-space", "[DONE]"]


def test_whole_stream() -> None:
    parser = SseParser()
    assert parser.feed(STREAM) + parser.close() == EVENTS


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16])
def test_stream_cut_into_chunks(size: int) -> None:
    parser = SseParser()
    events = []
    for start in range(0, len(STREAM), size):
        events += parser.feed(STREAM[start : start + size])
    assert events + parser.close() == EVENTS


def test_every_cut_point() -> None:
    for cut in range(len(STREAM) + 1):
        parser = SseParser()
        assert parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:]) + parser.close() == EVENTS, cut


def test_unterminated_last_event_is_dispatched_at_close() -> None:
    parser = SseParser()
    assert parser.feed(b"data: x\n\ndata: tail") == ["x"]
    assert parser.close() == ["tail"]


def test_empty_data_is_an_event() -> None:
    assert SseParser().feed(b"data:\n\n") == [""]
