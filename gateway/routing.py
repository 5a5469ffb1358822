"""Which language replica serves a call: each call's replicas in order of preference.

A session goes to its rendezvous (highest random weight) choice for its id, always: its KV lives
there. A call without a session goes where its prompt's prefix was most likely computed before:
the rendezvous choice for its *prefix key* (``prefix_key``: the tenant and the conversation up to
its first image, or up to its first user message when it has none), so requests that show the
same image, and the turns of a conversation whose client re-sends the history, meet the same
replica's prefix cache (the built-in engine's or vLLM's) instead of each replica computing the
same KV. So that a hot key cannot pile its work onto one replica, the choice is bounded by load
(consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam, 2016): a replica
takes the call only while its calls in flight from this gateway stay below ``LOAD_FACTOR`` times
the mean; otherwise the key's next replica in rendezvous order does. Calls with no key rotate.

Every order is a full preference order, not one address: the caller tries the first and falls
back to the next only when a replica is unavailable before it produced anything. Rendezvous
hashing moves only the keys of a replica that is added or removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
from collections import Counter
from collections.abc import Iterator, Sequence

from gateway.messages import ImageRef, Message

# A replica takes a keyed call while its load stays below this times the mean load (the call
# included); 1.25 bounds the worst replica at 1.25x the mean and keeps most keys at home.
LOAD_FACTOR = 1.25


def _weight(node: str, key: str) -> int:
    digest = hashlib.blake2b(f"{node}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, nodes: Sequence[str]) -> list[str]:
    """``nodes`` ordered by their weight for ``key``, highest first (stable across processes)."""
    return sorted(nodes, key=lambda node: (_weight(node, key), node), reverse=True)


def prefix_key(messages: Sequence[Message], tenant: str = "") -> str:
    """A digest of what a prompt's reusable prefix depends on: the tenant (prefix caches are
    scoped by it), then each message's role and parts (text, or an encoded image's id) up to and
    including the first image; with no image, up to and including the first user message."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(tenant.encode() + b"\x00")
    has_image = any(message.images() for message in messages)
    for message in messages:
        digest.update(b"\x01" + message.role.encode() + b"\x00")
        for part in message.parts:
            if isinstance(part, str):
                digest.update(b"\x02" + part.encode() + b"\x00")
                continue
            name = part.image_id if isinstance(part, ImageRef) else ""
            digest.update(b"\x03" + name.encode() + b"\x00")
            return digest.hexdigest()
        if message.role == "user" and not has_image:
            break
    return digest.hexdigest()


class Router:
    """Preference orders over a list of replica addresses, and their calls in flight."""

    def __init__(self, nodes: Sequence[str]):
        self.nodes: list[str] = []
        self.update(nodes)
        self._counter = itertools.count()
        self._load: Counter[str] = Counter()

    def update(self, nodes: Sequence[str]) -> None:
        """Route over ``nodes`` from now on (replicas found or gone); calls in flight keep counting
        until they end. Rendezvous orders move only the keys of the nodes added or removed."""
        if not nodes:
            raise ValueError("a router needs at least one address")
        self.nodes = list(dict.fromkeys(nodes))

    def for_key(self, key: str) -> list[str]:
        """Affinity order for ``key`` (a session id), whatever the load."""
        return rendezvous_order(key, self.nodes)

    def next_order(self) -> list[str]:
        """Round-robin order for a call without affinity."""
        start = next(self._counter) % len(self.nodes)
        return self.nodes[start:] + self.nodes[:start]

    def order(self, key: str | None) -> list[str]:
        return self.for_key(key) if key else self.next_order()

    def for_prefix(self, key: str) -> list[str]:
        """``key``'s rendezvous order, led by its first replica still under the load bound."""
        ranked = self.for_key(key)
        bound = math.ceil(LOAD_FACTOR * (self.load() + 1) / len(self.nodes))
        # Some replica is always under the bound: the loads sum to less than bound * len(nodes).
        first = next(i for i, node in enumerate(ranked) if self._load[node] < bound)
        return [ranked[first], *ranked[:first], *ranked[first + 1 :]]

    def load(self, node: str | None = None) -> int:
        """Calls in flight to ``node`` (to every replica when None)."""
        return self._load[node] if node is not None else sum(self._load.values())

    @contextlib.contextmanager
    def serving(self, node: str) -> Iterator[None]:
        """Count a call to ``node`` as in flight while the block runs."""
        self._load[node] += 1
        try:
            yield
        finally:
            self._load[node] -= 1
            if not self._load[node]:
                del self._load[node]
