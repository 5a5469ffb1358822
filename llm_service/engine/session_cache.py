"""KV reuse across the turns of a session: the last finished turn's cache, per session, LRU-bounded."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class _Entry:
    keys: list[int]  # one key per cached position: prompt keys, then the generated tokens fed back
    cache: Any  # single-row DynamicCache holding exactly len(keys) positions


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class SessionCache:
    """Per ``session_id``, the KV cache and position keys of its last finished turn.

    ``take`` hands the entry to the next turn (it is removed: a cache is owned by one running
    sequence at a time) cropped to the longest prefix its keys share with the new prompt, always
    leaving at least one prompt position to prefill. Image positions compare by their (negative)
    image keys, so an image reused at the same place matches too. Bounded LRU; thread-safe.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def put(self, session_id: str, keys: list[int], cache: Any) -> None:
        if self._max == 0 or not keys:
            return
        with self._lock:
            self._entries.pop(session_id, None)
            self._entries[session_id] = _Entry(keys, cache)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def take(self, session_id: str, prompt_keys: Sequence[int]) -> tuple[Any, int] | None:
        """(cache cropped to n positions, n) for the reusable prefix, or None."""
        with self._lock:
            entry = self._entries.pop(session_id, None)
        if entry is None:
            return None
        n = min(common_prefix(entry.keys, prompt_keys), len(prompt_keys) - 1)
        if n <= 0:
            return None
        entry.cache.crop(n - len(entry.keys))
        return entry.cache, n

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)
