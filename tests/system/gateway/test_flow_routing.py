"""Calls without a session go to the replica their prompt's prefix leads to (the same image, or
the same opening of a re-sent conversation, meets the same prefix cache), bounded by load."""

from __future__ import annotations

import asyncio

from vlm.v1 import common_pb2, gateway_pb2

from tests.support.fake_system import StartSystem, answer_of, collect, data_uri, image, text, user


def png(n: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + f"picture-{n}".encode()


def generate(*messages: gateway_pb2.ChatMessage) -> gateway_pb2.GenerateRequest:
    return gateway_pb2.GenerateRequest(messages=list(messages))


def served_by(system, before: list[int]) -> list[int]:  # type: ignore[no-untyped-def]
    """Indexes of the replicas that received a request since ``before`` (their counts then)."""
    return [i for i, llm in enumerate(system.llms) if len(llm.requests) > before[i]]


def counts(system) -> list[int]:  # type: ignore[no-untyped-def]
    return [len(llm.requests) for llm in system.llms]


async def test_one_image_meets_one_replica_and_distinct_images_spread(start_system: StartSystem) -> None:
    system = await start_system(replicas=2)
    homes = set()
    for question in ("what is it?", "what colour?", "how many?", "where is it?"):
        before = counts(system)
        await collect(system.stub.Generate(generate(user(image(data=png(0)), text(question)))))
        homes.update(served_by(system, before))
    assert len(homes) == 1
    # The same picture by URL or data URI is the same image (same id): same replica again.
    before = counts(system)
    await collect(system.stub.Generate(generate(user(image(url=data_uri(png(0))), text("and now?")))))
    assert served_by(system, before) == list(homes)
    spread = set()
    for n in range(1, 13):
        before = counts(system)
        await collect(system.stub.Generate(generate(user(image(data=png(n)), text("what is it?")))))
        spread.update(served_by(system, before))
    assert spread == {0, 1}


async def homes_of(system, history: list[gateway_pb2.ChatMessage], turns: int) -> set[int]:  # type: ignore[no-untyped-def]
    """The replicas that served ``turns`` turns of a conversation whose history is re-sent."""
    homes: set[int] = set()
    for turn in range(turns):
        before = counts(system)
        answer = answer_of(await collect(system.stub.Generate(generate(*history))))
        homes.update(served_by(system, before))
        reply = gateway_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, parts=[text(answer)])
        history = [*history, reply, user(text(f"and turn {turn + 2}?"))]
    return homes


async def test_a_re_sent_conversation_stays_on_its_replica(start_system: StartSystem) -> None:
    system = await start_system(replicas=2)
    for opening in range(6):
        homes = await homes_of(system, [user(image(data=png(100 + opening)), text("describe it"))], 4)
        assert len(homes) == 1, (opening, homes)
    # Text-only conversations: keyed by their opening (system prompt and first user message).
    system_prompt = gateway_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, parts=[text("be brief")])
    for opening in range(6):
        homes = await homes_of(system, [system_prompt, user(text(f"question {opening}"))], 3)
        assert len(homes) == 1, (opening, homes)


async def test_a_hot_image_spills_to_the_next_replica_under_load(start_system: StartSystem) -> None:
    system = await start_system(replicas=2)
    for llm in system.llms:
        llm.delay = 0.3
    request = generate(user(image(data=png(7)), text("busy?")))
    answers = await asyncio.gather(*(collect(system.stub.Generate(request)) for _ in range(6)))
    assert all(answer_of(a) == "u1.." for a in answers)
    loads = sorted(counts(system))
    # Six calls in flight at once, two replicas, bound 1.25x the mean: the key's home takes 4.
    assert loads == [2, 4], loads
    assert system.app.downstream.language.load() == 0  # every call counted out again
