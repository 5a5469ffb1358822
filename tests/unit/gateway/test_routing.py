"""Replica choice: rendezvous hashing for sessions and for prompt prefixes (bounded by load),
round robin for calls with no key."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.messages import ImageRef, Message
from gateway.routing import Router, prefix_key, rendezvous_order

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


def msg(role: str, *parts: str | ImageRef) -> Message:
    return Message(role, tuple(parts))  # type: ignore[arg-type]


def ref(name: str) -> ImageRef:
    return ImageRef(name, 4)


def test_prefix_key_covers_the_opening_up_to_the_first_image() -> None:
    one = prefix_key([msg("user", ref("img-a"), "what is it?")])
    assert one == prefix_key([msg("user", ref("img-a"), "what colour?")])
    assert one == prefix_key(
        [msg("user", ref("img-a"), "what is it?"), msg("assistant", "a cat"), msg("user", "and now?")]
    )
    assert one != prefix_key([msg("user", ref("img-b"), "what is it?")])
    assert one != prefix_key([msg("user", ref("img-a"), "what is it?")], tenant="acme")
    assert one != prefix_key([msg("system", "be brief"), msg("user", ref("img-a"), "what is it?")])
    # Text before the image is part of the prefix; text after it is not.
    before = prefix_key([msg("user", "look:", ref("img-a"), "what?")])
    assert before == prefix_key([msg("user", "look:", ref("img-a"), "why?")])
    assert before != prefix_key([msg("user", "see:", ref("img-a"), "what?")])
    # An image in a later turn: the key runs to it, through the earlier turns.
    late = [msg("user", "hi"), msg("assistant", "hello"), msg("user", ref("img-a"))]
    assert prefix_key(late) == prefix_key([*late, msg("assistant", "a cat"), msg("user", "more")])
    assert prefix_key(late) != prefix_key([msg("user", "hey"), *late[1:]])


def test_prefix_key_of_text_runs_through_the_first_user_message() -> None:
    opening = [msg("system", "be brief"), msg("user", "question one")]
    key = prefix_key(opening)
    assert key == prefix_key([*opening, msg("assistant", "answer"), msg("user", "question two")])
    assert key != prefix_key([msg("system", "be brief"), msg("user", "question three")])
    assert key != prefix_key([msg("system", "be long"), msg("user", "question one")])
    # Field boundaries are encoded: moving text between parts or roles changes the key.
    assert prefix_key([msg("user", "ab", "c")]) != prefix_key([msg("user", "a", "bc")])
    as_system = prefix_key([msg("system", "x"), msg("user", "y")])
    assert as_system != prefix_key([msg("user", "x"), msg("user", "y")])


def test_a_prefix_stays_home_until_its_replica_passes_the_load_bound() -> None:
    router = Router(NODES)
    ranked = router.for_key("k")
    assert router.for_prefix("k") == ranked  # idle: the rendezvous order itself
    held = []
    picks = []
    for _ in range(12):  # twelve calls of one hot key, all still in flight
        order = router.for_prefix("k")
        assert sorted(order) == sorted(NODES)  # always every replica, for fail-over
        picks.append(order[0])
        held.append(router.serving(order[0]))
        held[-1].__enter__()
    loads = Counter(picks)
    assert loads[ranked[0]] == max(loads.values())
    # The bound: no replica above 1.25x the mean, rounded up (12 calls / 3 replicas -> 5).
    assert max(loads.values()) <= 5 and len(loads) == 3
    assert router.load() == 12 and router.load(ranked[0]) == loads[ranked[0]]
    for context in held:
        context.__exit__(None, None, None)
    assert router.load() == 0 and router.for_prefix("k") == ranked


def test_a_call_is_counted_out_when_it_fails() -> None:
    router = Router(NODES)
    with pytest.raises(RuntimeError), router.serving(NODES[0]):
        assert router.load(NODES[0]) == 1
        raise RuntimeError("stream broke")
    assert router.load() == 0


def test_hot_keys_spread_while_many_keys_keep_their_homes() -> None:
    router = Router(NODES)
    keys = [f"image-{i}" for i in range(300)]
    homes = {k: router.for_prefix(k)[0] for k in keys}
    assert homes == {k: rendezvous_order(k, NODES)[0] for k in keys}
    assert min(Counter(homes.values()).values()) > 60
