"""Replica choice: rendezvous hashing for sessions, round robin for one-off calls."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.routing import Router, rendezvous_order

NODES = ["llm-0:50052", "llm-1:50052", "llm-2:50052"]


def test_rendezvous_is_stable_and_independent_of_node_order() -> None:
    for key in ("a", "b", "session-42"):
        first = rendezvous_order(key, NODES)
        assert sorted(first) == sorted(NODES)
        assert rendezvous_order(key, list(reversed(NODES))) == first
        assert Router(NODES).for_key(key) == first


def test_rendezvous_spreads_sessions_and_moves_only_the_removed_nodes_share() -> None:
    keys = [f"session-{i}" for i in range(600)]
    before = {k: rendezvous_order(k, NODES)[0] for k in keys}
    counts = Counter(before.values())
    assert min(counts.values()) > 120  # roughly a third each
    after = {k: rendezvous_order(k, NODES[:2])[0] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == NODES[2] for k in moved)
    assert all(after[k] == rendezvous_order(k, NODES)[1] for k in moved)  # the fallback is the next rank


def test_round_robin_rotates() -> None:
    router = Router(NODES)
    firsts = [router.order(None)[0] for _ in range(6)]
    assert firsts == NODES + NODES
    assert sorted(router.order("")) == sorted(NODES)


def test_router_needs_an_address_and_dedupes() -> None:
    with pytest.raises(ValueError):
        Router([])
    assert Router(["a:1", "a:1", "b:1"]).nodes == ["a:1", "b:1"]
