"""Language replicas behind one DNS name (a Kubernetes headless Service): the real gateway
resolves ``dns:///NAME:PORT`` itself and routes over each replica, so affinity reaches the pod,
and it follows replicas that appear and go. The fakes listen on 127.0.0.1 and 127.0.0.2 with one
port, as pods behind one Service do; the name resolves through the gateway's resolver seam."""

from __future__ import annotations

import asyncio

from tests.support.fake_system import StartSystem, System, chat, collect, image, new_session, text, user
from tests.system.gateway.test_flow_routing import counts, generate, png, served_by


async def wait_for_nodes(system: System, count: int, within: float = 5.0) -> list[str]:
    """The gateway's language nodes once there are ``count`` of them."""

    async def settled() -> list[str]:
        while len(system.app.downstream.language.nodes) != count:
            await asyncio.sleep(0.02)
        return system.app.downstream.language.nodes

    return await asyncio.wait_for(settled(), within)


async def images_spread(system: System, first: int, n: int = 12) -> set[int]:
    """Which replicas served ``n`` requests with distinct images."""
    spread: set[int] = set()
    for k in range(first, first + n):
        before = counts(system)
        await collect(system.stub.Generate(generate(user(image(data=png(k)), text("what is it?")))))
        spread.update(served_by(system, before))
    return spread


async def test_one_name_routes_over_each_replica_with_affinity(start_system: StartSystem) -> None:
    system = await start_system(replicas=2, dns_name="llm.test")
    port = system.servers[1].port
    assert system.app.downstream.language.nodes == [f"127.0.0.1:{port}", f"127.0.0.2:{port}"]
    assert system.app.metrics.get("llm_replicas") == 2
    assert await images_spread(system, 0) == {0, 1}
    homes = set()
    for question in ("what is it?", "what colour?", "how many?"):
        before = counts(system)
        await collect(system.stub.Generate(generate(user(image(data=png(0)), text(question)))))
        homes.update(served_by(system, before))
    assert len(homes) == 1
    for n in range(4):  # a session's turns stay where its KV is
        session = await new_session(system)
        turns = set()
        for turn in range(3):
            before = counts(system)
            await chat(system, session, text(f"turn {turn}"))
            turns.update(served_by(system, before))
        assert len(turns) == 1, (n, turns)


async def test_replicas_that_appear_and_go_are_followed(start_system: StartSystem) -> None:
    system = await start_system(replicas=2, dns_name="llm.test", llm_resolve_seconds=0.05)
    system.resolver.answers["llm.test"] = ["127.0.0.1"]  # the second pod is not ready yet
    await wait_for_nodes(system, 1)
    assert await images_spread(system, 100, 6) == {0}
    system.resolver.answers["llm.test"] = ["127.0.0.1", "127.0.0.2"]  # it is now
    await wait_for_nodes(system, 2)
    assert await images_spread(system, 200) == {0, 1}
    del system.resolver.answers["llm.test"]  # DNS fails for a while: the last answer stands
    calls = system.resolver.calls
    while system.resolver.calls < calls + 3:
        await asyncio.sleep(0.02)
    assert len(system.app.downstream.language.nodes) == 2
    system.resolver.answers["llm.test"] = ["127.0.0.2"]  # the first pod is gone
    await wait_for_nodes(system, 1)
    assert await images_spread(system, 300, 6) == {1}
    assert system.app.metrics.get("llm_replicas") == 1
