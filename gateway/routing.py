"""Which replica serves a call: rendezvous hashing for sessions, round robin otherwise.

Both return a full preference order, not one address: the caller tries the first and falls
back to the next only when a replica is unavailable before it produced anything. Rendezvous
(highest random weight) hashing keeps a session on the same language replica across turns
(so its KV prefix cache is reused) and moves only the sessions of a replica that is added or
removed.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence


def _weight(node: str, key: str) -> int:
    digest = hashlib.blake2b(f"{node}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, nodes: Sequence[str]) -> list[str]:
    """``nodes`` ordered by their weight for ``key``, highest first (stable across processes)."""
    return sorted(nodes, key=lambda node: (_weight(node, key), node), reverse=True)


class Router:
    """Preference orders over a fixed list of replica addresses."""

    def __init__(self, nodes: Sequence[str]):
        if not nodes:
            raise ValueError("a router needs at least one address")
        self.nodes = list(dict.fromkeys(nodes))
        self._counter = itertools.count()

    def for_key(self, key: str) -> list[str]:
        """Affinity order for ``key`` (a session id)."""
        return rendezvous_order(key, self.nodes)

    def next_order(self) -> list[str]:
        """Round-robin order for a call without affinity."""
        start = next(self._counter) % len(self.nodes)
        return self.nodes[start:] + self.nodes[:start]

    def order(self, key: str | None) -> list[str]:
        return self.for_key(key) if key else self.next_order()
