"""Server-sent events, parsed incrementally from the bytes of a streaming response.

Per the HTML standard: lines end with ``\\n``, ``\\r\\n`` or ``\\r``; ``data:`` lines of one event
are joined with ``\\n``; a blank line dispatches the event; ``:`` lines are comments; other fields
(``event``, ``id``, ``retry``) are ignored, as OpenAI streams do not use them. Bytes may arrive cut
anywhere, even inside a UTF-8 character or between ``\\r`` and ``\\n``.
"""

from __future__ import annotations

import codecs


class SseParser:
    """Feed it byte chunks; it returns the ``data`` of every event completed so far."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._pending = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The data of the events that ``chunk`` completes, in order."""
        self._pending += self._decoder.decode(chunk)
        events: list[str] = []
        while (line := self._next_line()) is not None:
            if (event := self._line(line)) is not None:
                events.append(event)
        return events

    def close(self) -> list[str]:
        """At the end of the stream: an unterminated last event is dispatched too."""
        self._pending += self._decoder.decode(b"", final=True)
        events = self.feed(b"\n") if self._pending else []
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _next_line(self) -> str | None:
        text = self._pending
        for index, char in enumerate(text):
            if char == "\n" or (char == "\r" and index + 1 < len(text)):
                end = index + 2 if text[index : index + 2] == "\r\n" else index + 1
                self._pending = text[end:]
                return text[:index]
        return None  # no full line yet (a trailing "\r" may still be followed by "\n")

    def _line(self, line: str) -> str | None:
        if not line:
            event = "\n".join(self._data) if self._data else None
            self._data = []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None
