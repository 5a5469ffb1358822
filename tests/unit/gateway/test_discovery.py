"""Language replicas behind one DNS name: parsing, expansion, keeping the last good answer,
following changes, and what the router and the channels make of them."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.discovery import DnsName, ReplicaDiscovery, node_address, system_resolve
from gateway.downstream import Downstream
from gateway.routing import Router, rendezvous_order
from tests.support.fake_system import FakeResolver


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("dns:///tandem-llm:50052", DnsName("tandem-llm", 50052)),
        ("dns:///tandem-llm.tandem.svc.cluster.local:1", DnsName("tandem-llm.tandem.svc.cluster.local", 1)),
        ("dns:///[::1]:50052", DnsName("::1", 50052)),
        ("tandem-llm:50052", None),
        ("127.0.0.1:50052", None),
    ],
)
def test_parse(address: str, expected: DnsName | None) -> None:
    assert DnsName.parse(address) == expected


@pytest.mark.parametrize(
    "address", ["dns:///tandem-llm", "dns:///:50052", "dns:///llm:0", "dns:///llm:70000", "dns:///llm:http"]
)
def test_parse_refuses_a_malformed_name(address: str) -> None:
    with pytest.raises(ValueError, match="dns:///HOST:PORT"):
        DnsName.parse(address)


def test_the_config_refuses_what_discovery_cannot_use() -> None:
    with pytest.raises(ValueError, match="dns:///HOST:PORT"):
        GatewayConfig(llm_addresses=("dns:///tandem-llm",))
    with pytest.raises(ValueError, match="llm_resolve_seconds"):
        GatewayConfig(llm_resolve_seconds=0)
    assert GatewayConfig(llm_addresses=("dns:///tandem-llm:50052", "10.0.0.9:50052")).llm_resolve_seconds > 0


def test_node_address_brackets_ipv6() -> None:
    assert node_address("10.1.2.3", 50052) == "10.1.2.3:50052"
    assert node_address("fd00::7", 50052) == "[fd00::7]:50052"


async def test_names_expand_to_one_node_per_address_plain_entries_stay() -> None:
    resolver = FakeResolver({"llm": ["10.0.0.2", "10.0.0.1", "10.0.0.2", "fd00::3"]})
    discovery = ReplicaDiscovery(["static:1", "dns:///llm:50052"], resolver)
    assert discovery.nodes() == ["static:1", "dns:///llm:50052"]  # before the first answer: the name
    assert await discovery.refresh()
    assert discovery.nodes() == ["static:1", "10.0.0.1:50052", "10.0.0.2:50052", "[fd00::3]:50052"]
    assert discovery.authority("10.0.0.1:50052") == "llm"
    assert discovery.authority("static:1") is None
    assert not await discovery.refresh()  # same answer: no change


async def test_a_failed_or_empty_answer_keeps_the_last_good_one() -> None:
    resolver = FakeResolver({"llm": ["10.0.0.1", "10.0.0.2"]})
    changes: list[list[str]] = []
    discovery = ReplicaDiscovery(["dns:///llm:7"], resolver, on_change=changes.append)
    await discovery.refresh()
    good = ["10.0.0.1:7", "10.0.0.2:7"]
    resolver.answers["llm"] = []
    assert not await discovery.refresh()
    del resolver.answers["llm"]
    assert not await discovery.refresh()
    assert discovery.nodes() == good and changes == [good]
    resolver.answers["llm"] = ["10.0.0.2", "10.0.0.3"]
    assert await discovery.refresh()
    assert changes == [good, ["10.0.0.2:7", "10.0.0.3:7"]]
    assert discovery.authority("10.0.0.1:7") is None  # gone


async def test_a_resolver_that_hangs_counts_as_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.discovery.RESOLVE_TIMEOUT_SECONDS", 0.05)

    async def hang(host: str, port: int) -> list[str]:
        await asyncio.sleep(60)
        return []

    discovery = ReplicaDiscovery(["dns:///llm:7", "static:1"], hang)
    assert not await asyncio.wait_for(discovery.refresh(), 5)
    assert discovery.nodes() == ["dns:///llm:7", "static:1"]


async def test_a_name_that_never_resolved_stays_the_node() -> None:
    discovery = ReplicaDiscovery(["dns:///nowhere:7"], FakeResolver())
    assert not await discovery.refresh()
    assert discovery.nodes() == ["dns:///nowhere:7"]


async def test_start_follows_changes_until_stopped() -> None:
    resolver = FakeResolver({"llm": ["10.0.0.1"]})
    changed = asyncio.Event()
    discovery = ReplicaDiscovery(["dns:///llm:7"], resolver, 0.01, lambda nodes: changed.set())
    discovery.start()
    try:
        await asyncio.wait_for(changed.wait(), 5)
        changed.clear()
        resolver.answers["llm"] = ["10.0.0.1", "10.0.0.2"]
        await asyncio.wait_for(changed.wait(), 5)
        assert discovery.nodes() == ["10.0.0.1:7", "10.0.0.2:7"]
    finally:
        await discovery.stop()
    calls = resolver.calls
    await asyncio.sleep(0.05)
    assert resolver.calls == calls


async def test_without_names_nothing_runs() -> None:
    resolver = FakeResolver()
    discovery = ReplicaDiscovery(["a:1", "b:2"], resolver, 0.01)
    discovery.start()
    await asyncio.sleep(0.05)
    await discovery.stop()
    assert resolver.calls == 0 and discovery.nodes() == ["a:1", "b:2"]


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        ReplicaDiscovery(["dns:///llm:7"], FakeResolver(), 0)


async def test_the_system_resolver_answers_localhost() -> None:
    assert "127.0.0.1" in await system_resolve("localhost", 50052)
    with pytest.raises(OSError):
        await system_resolve("no-such-host.invalid", 50052)


def test_router_update_moves_only_the_keys_of_changed_nodes() -> None:
    before = [f"10.0.0.{i}:7" for i in range(1, 5)]
    router = Router(before)
    keys = [f"session-{n}" for n in range(200)]
    homes = {key: router.for_key(key)[0] for key in keys}
    router.update([*before[:3], "10.0.0.9:7"])  # pod 4 gone, pod 9 new
    moved = [key for key in keys if router.for_key(key)[0] != homes[key]]
    assert all(homes[k] == before[3] or router.for_key(k)[0] == "10.0.0.9:7" for k in moved)
    assert any(homes[k] == before[3] for k in keys) and moved
    with pytest.raises(ValueError):
        router.update([])


def test_router_update_keeps_counting_calls_in_flight() -> None:
    router = Router(["a:1", "b:1"])
    with router.serving("a:1"):
        router.update(["b:1", "c:1"])
        assert router.load() == 1
        key = next(k for k in (f"k{n}" for n in range(100)) if rendezvous_order(k, router.nodes)[0] == "b:1")
        assert router.for_prefix(key)[0] == "b:1"
    assert router.load() == 0


async def test_downstream_closes_the_channel_of_a_gone_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = FakeResolver({"llm": ["10.0.0.1", "10.0.0.2"]})
    downstream = Downstream([], ["dns:///llm:7"], 1 << 20, resolve=resolver, resolve_seconds=60)
    try:
        await downstream.start()
        assert downstream.language.nodes == ["10.0.0.1:7", "10.0.0.2:7"]
        for node in downstream.language.nodes:
            downstream._language_stub(node)
        gone = downstream._channels["10.0.0.1:7"]
        resolver.answers["llm"] = ["10.0.0.2", "10.0.0.3"]
        await downstream.discovery.refresh()
        assert downstream.language.nodes == ["10.0.0.2:7", "10.0.0.3:7"]
        assert "10.0.0.1:7" not in downstream._channels and "10.0.0.1:7" not in downstream._language_stubs
        await asyncio.sleep(0.1)  # no call in flight: the close finishes at once
        assert not downstream._draining
        with pytest.raises(grpc.aio.UsageError, match="Channel is closed"):  # not merely unreachable
            await gone.unary_unary("/x.Y/Z")(b"", timeout=1)
    finally:
        await downstream.close()


async def test_tls_to_a_resolved_address_verifies_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[tuple[str, object]]] = {}

    def secure_channel(address: str, credentials: object, options: list[tuple[str, object]]) -> object:
        seen[address] = options
        return grpc.aio.insecure_channel(address)

    monkeypatch.setattr("gateway.downstream.aio.secure_channel", secure_channel)
    resolver = FakeResolver({"tandem-llm": ["10.0.0.1"]})
    downstream = Downstream(
        [], ["dns:///tandem-llm:7", "plain:7"], 1 << 20, tls_ca=b"ca", resolve=resolver, resolve_seconds=60
    )
    try:
        await downstream.start()
        downstream._language_stub("10.0.0.1:7")
        downstream._language_stub("plain:7")
        assert ("grpc.ssl_target_name_override", "tandem-llm") in seen["10.0.0.1:7"]
        assert not any(name == "grpc.ssl_target_name_override" for name, _ in seen["plain:7"])
    finally:
        await downstream.close()
