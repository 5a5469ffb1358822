"""Stop strings over streamed text: cut at the first match, never show part of one."""

from __future__ import annotations


class StopStringFilter:
    """Buffers streamed text so that no emitted text contains a stop string or ends with a prefix of one.

    ``push(delta)`` returns (text safe to emit now, whether a stop string matched). On a match the
    text up to (not including) the stop string is returned and nothing more should be pushed.
    ``flush()`` releases held-back text when generation ends for another reason.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(dict.fromkeys(stops))
        self._pending = ""

    def push(self, delta: str) -> tuple[str, bool]:
        if not self._stops:
            return delta, False
        self._pending += delta
        cut = self._first_match()
        if cut is not None:
            out, self._pending = self._pending[:cut], ""
            return out, True
        keep = self._held_suffix_length()
        split = len(self._pending) - keep
        out, self._pending = self._pending[:split], self._pending[split:]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _first_match(self) -> int | None:
        found = [i for i in (self._pending.find(stop) for stop in self._stops) if i >= 0]
        return min(found) if found else None

    def _held_suffix_length(self) -> int:
        """Length of the longest tail of the pending text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest
