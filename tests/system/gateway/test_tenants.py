"""Two tenants on one deployment (the real gateway, real Redis, fake workers): API keys name the
tenants; sessions and image ids of one are NOT_FOUND to the other, exactly like unknown ones,
over gRPC and HTTP; listing shows the caller's own; the same bytes work for everyone who sent
them; the language service gets the tenant; DeleteSession drops the replica's KV."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import grpc
import pytest
from vlm.v1 import gateway_pb2

from tests.support.fake_services import sha
from tests.support.fake_system import (
    PNG_A,
    PNG_B,
    StartSystem,
    System,
    collect,
    image,
    status_of,
    text,
    user,
)
from tests.support.waiting import eventually

KEYS = ("alice=tok-alice", "bob=tok-bob")
ALICE = (("authorization", "Bearer tok-alice"),)
BOB = (("authorization", "Bearer tok-bob"),)
UNKNOWN_SESSION = "0123456789abcdef" * 2
UNKNOWN_IMAGE = "ab" * 32


async def two_tenants(start_system: StartSystem, **options: Any) -> System:
    return await start_system(api_key=KEYS, **options)


async def create(system: System, who: Any, prompt: str = "") -> str:
    request = gateway_pb2.CreateSessionRequest(system_prompt=prompt)
    return str((await system.stub.CreateSession(request, metadata=who)).session.session_id)


async def get_status(system: System, session_id: str, who: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=session_id), metadata=who)
    return failed.value.code(), failed.value.details() or ""


def generate(system: System, who: Any, *parts: gateway_pb2.Part) -> Any:
    request = gateway_pb2.GenerateRequest(messages=[user(*parts)])
    return system.stub.Generate(request, metadata=who, timeout=10)


async def test_every_call_needs_a_key(start_system: StartSystem) -> None:
    system = await two_tenants(start_system)
    for metadata in [(), (("authorization", "Bearer tok-carol"),), (("authorization", "tok-alice"),)]:
        code, _ = await status_of(generate(system, metadata, text("hi")))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert (await collect(generate(system, ALICE, text("hi"))))[0].text == "u1"


async def test_another_tenants_session_is_exactly_like_an_unknown_one(start_system: StartSystem) -> None:
    system = await two_tenants(start_system)
    sid = await create(system, ALICE, "alice's secret prompt")
    unknown = await get_status(system, UNKNOWN_SESSION, BOB)
    assert unknown[0] == grpc.StatusCode.NOT_FOUND
    assert await get_status(system, sid, BOB) == unknown
    chat = gateway_pb2.ChatRequest(session_id=sid, parts=[text("hi")])
    assert (await status_of(system.stub.Chat(chat, metadata=BOB)))[0] == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as deleted:
        await system.stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=sid), metadata=BOB)
    assert (deleted.value.code(), deleted.value.details()) == unknown
    got = await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid), metadata=ALICE)
    assert got.session.messages[0].parts[0].text == "alice's secret prompt"  # untouched by bob
    answer = await collect(system.stub.Chat(chat, metadata=ALICE))
    assert "".join(r.text for r in answer) == "u1.."


async def test_listing_shows_the_callers_own_sessions(start_system: StartSystem) -> None:
    system = await two_tenants(start_system)
    alices = {await create(system, ALICE) for _ in range(3)}
    bobs = {await create(system, BOB)}

    async def listed(who: Any) -> set[str]:
        found, token = set(), ""
        while True:
            request = gateway_pb2.ListSessionsRequest(page_size=2, page_token=token)
            page = await system.stub.ListSessions(request, metadata=who)
            found |= {s.session_id for s in page.sessions}
            if not (token := page.next_page_token):
                return found

    assert await listed(ALICE) == alices and await listed(BOB) == bobs


async def test_image_ids_resolve_only_for_a_tenant_that_sent_the_bytes(start_system: StartSystem) -> None:
    system = await two_tenants(start_system)
    sent = await collect(generate(system, ALICE, image(data=PNG_A), text("what is it?")))
    image_id = sent[0].image_ids[0]
    assert image_id == sha(PNG_A)
    unknown = await status_of(generate(system, BOB, image(image_id=UNKNOWN_IMAGE), text("and this?")))
    assert unknown[0] == grpc.StatusCode.NOT_FOUND
    assert await status_of(generate(system, BOB, image(image_id=image_id), text("and this?"))) == unknown
    sid = await create(system, BOB)
    chat = gateway_pb2.ChatRequest(session_id=sid, parts=[image(image_id=image_id), text("x")])
    assert await status_of(system.stub.Chat(chat, metadata=BOB)) == unknown
    # the same bytes, sent by bob too: his from then on, and still alice's
    assert (await collect(generate(system, BOB, image(data=PNG_A), text("x"))))[0].image_ids == [image_id]
    for who in (ALICE, BOB):
        assert await collect(generate(system, who, image(image_id=image_id), text("again")))


async def test_a_sessions_images_stay_usable_in_it(start_system: StartSystem) -> None:
    system = await two_tenants(start_system)
    sid = await create(system, ALICE)
    first = gateway_pb2.ChatRequest(session_id=sid, parts=[image(data=PNG_B), text("look")])
    image_id = (await collect(system.stub.Chat(first, metadata=ALICE)))[0].image_ids[0]
    again = gateway_pb2.ChatRequest(session_id=sid, parts=[image(image_id=image_id), text("again")])
    assert "".join(r.text for r in await collect(system.stub.Chat(again, metadata=ALICE))) == "u2.."


async def test_the_language_service_gets_the_tenant_and_drops_deleted_sessions(
    start_system: StartSystem, caplog: pytest.LogCaptureFixture
) -> None:
    system = await two_tenants(start_system)
    sid = await create(system, BOB)
    with caplog.at_level(logging.INFO, logger="tandem.access"):
        chat = gateway_pb2.ChatRequest(session_id=sid, parts=[text("hi")])
        await collect(system.stub.Chat(chat, metadata=BOB))
        await eventually(
            lambda: any("tenant=bob" in r.getMessage() for r in caplog.records if r.name == "tandem.access")
        )
    assert [(r.session_id, r.tenant) for r in system.llm.requests] == [(sid, "bob")]
    await system.stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=sid), metadata=BOB)
    assert [(r.session_id, r.tenant) for r in system.llm.released] == [(sid, "bob")]


async def test_tenant_scoped_cache_salts_the_image_keys_per_tenant(start_system: StartSystem) -> None:
    shared = await two_tenants(start_system)
    await collect(generate(shared, ALICE, image(data=PNG_A), text("x")))
    assert shared.vision.calls[-1].key_scope == ""
    scoped = await two_tenants(start_system, cache_scope="tenant")
    await collect(generate(scoped, ALICE, image(data=PNG_A), text("x")))
    await collect(generate(scoped, BOB, image(data=PNG_A), text("x")))
    assert [c.key_scope for c in scoped.vision.calls] == ["alice", "bob"]


async def test_http_sessions_are_per_tenant_too(start_system: StartSystem) -> None:
    system = await two_tenants(start_system, http_port=0)
    assert system.app.http is not None
    base = f"http://127.0.0.1:{system.app.http.port}/v1"
    alice, bob = ({"Authorization": f"Bearer tok-{name}"} for name in ("alice", "bob"))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/sessions", json={}, headers=alice) as created:
            sid = (await created.json())["id"]
        async with http.get(f"{base}/sessions/{UNKNOWN_SESSION}", headers=bob) as unknown:
            unknown_body = await unknown.json()
        async with http.get(f"{base}/sessions/{sid}", headers=bob) as theirs:
            assert theirs.status == unknown.status == 404
            assert await theirs.json() == unknown_body
        async with http.delete(f"{base}/sessions/{sid}", headers=bob) as deleted:
            assert deleted.status == 404
        async with http.get(f"{base}/sessions/{sid}") as anonymous:
            assert anonymous.status == 401
        async with http.get(f"{base}/sessions/{sid}", headers=alice) as own:
            assert own.status == 200 and (await own.json())["id"] == sid
