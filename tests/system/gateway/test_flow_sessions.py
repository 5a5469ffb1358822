"""The session protocol through the public API of the real gateway over fake services: history
by image id, replayed retries, refused concurrent turns, failed and cancelled turns not saved,
CRUD, restarts, shutdown mid-turn, and the session store down (TESTPLAN 23, 24).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from gateway.app import GatewayApp
from tandem.redis_local import LocalRedis, free_port
from tests.support.fake_services import idle, sha
from tests.support.fake_system import (
    PNG_A,
    StartSystem,
    answer_of,
    chat,
    collect,
    image,
    new_session,
    status_of,
    text,
    user,
)


async def test_three_turns_reuse_the_first_image_by_id(start_system: StartSystem) -> None:
    system = await start_system()
    sid = await new_session(system, "be brief")
    first = await chat(system, sid, image(data=PNG_A), text("what is it?"))
    assert list(first[0].image_ids) == [sha(PNG_A)] and answer_of(first) == "u1.."
    await chat(system, sid, text("and the colour?"))
    third = await chat(system, sid, image(image_id=sha(PNG_A)), text("look again"))
    assert answer_of(third) == "u3.."
    history = system.llm.requests[-1].messages
    assert [m.role for m in history] == [1, 2, 3, 2, 3, 2]
    refs = [p.image.image_id for m in history for p in m.parts if p.WhichOneof("kind") == "image"]
    assert refs == [sha(PNG_A), sha(PNG_A)]
    assert [i.image_id for i in system.vision.calls[-1].images] == [sha(PNG_A), sha(PNG_A)]  # one call
    session = (await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert len(session.messages) == 7 and session.messages[0].parts[0].text == "be brief"
    assert session.messages[1].parts[0].image_id == sha(PNG_A)
    assert session.messages[2].parts[0].text == "u1.."


async def test_retried_turn_is_replayed_not_duplicated(start_system: StartSystem) -> None:
    system = await start_system()
    sid = await new_session(system)
    first = await chat(system, sid, image(data=PNG_A), text("hi"), request_id="turn-1")
    again = await chat(system, sid, image(data=PNG_A), text("hi"), request_id="turn-1")
    assert len(again) == 1 and again[0].replayed and not first[0].replayed
    assert again[0].text == answer_of(first) and list(again[0].image_ids) == [sha(PNG_A)]
    assert again[0].finish_reason == common_pb2.FINISH_REASON_STOP and again[0].usage.completion_tokens == 3
    assert len(system.llm.requests) == 1
    session = (await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert len(session.messages) == 2


async def test_concurrent_turn_is_aborted_and_history_not_interleaved(start_system: StartSystem) -> None:
    system = await start_system()
    system.llm.delay = 0.1
    sid = await new_session(system)
    slow = asyncio.create_task(chat(system, sid, text("first")))
    await asyncio.sleep(0.15)
    code, details = await status_of(
        system.stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=[text("second")]))
    )
    assert code == grpc.StatusCode.ABORTED and "another turn of this session is in progress" in details
    await slow
    session = (await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert [m.parts[0].text for m in session.messages] == ["first", "u1.."]


async def test_failed_and_cancelled_turns_leave_the_session_as_it_was(start_system: StartSystem) -> None:
    system = await start_system()
    sid = await new_session(system)
    await chat(system, sid, text("one"))
    system.llm.fail = (grpc.StatusCode.INVALID_ARGUMENT, "prompt too long")
    code, _ = await status_of(system.stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=[text("two")])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    system.llm.fail, system.llm.delay, system.llm.chunks = None, 0.05, 100
    call = system.stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=[text("three")]))
    async for _ in call:
        call.cancel()
        break
    assert await idle(system.llm)
    system.llm.delay, system.llm.chunks = 0.0, 3
    assert answer_of(await chat(system, sid, text("four"))) == "u2.."  # lock released, history intact
    session = (await system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    assert [m.parts[0].text for m in session.messages] == ["one", "u1..", "four", "u2.."]


async def test_session_crud_and_not_found(start_system: StartSystem) -> None:
    system = await start_system()
    ids = [await new_session(system) for _ in range(3)]
    listed = await system.stub.ListSessions(gateway_pb2.ListSessionsRequest(page_size=2))
    rest = await system.stub.ListSessions(
        gateway_pb2.ListSessionsRequest(page_size=2, page_token=listed.next_page_token)
    )
    assert sorted(s.session_id for s in [*listed.sessions, *rest.sessions]) == sorted(ids)
    assert not rest.next_page_token
    await system.stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=ids[0]))
    for call in (
        system.stub.GetSession(gateway_pb2.GetSessionRequest(session_id=ids[0])),
        system.stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=ids[0])),
    ):
        with pytest.raises(aio.AioRpcError) as missing:
            await call
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    code, _ = await status_of(system.stub.Chat(gateway_pb2.ChatRequest(session_id="nope", parts=[text("x")])))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_session_survives_a_gateway_restart(
    start_system: StartSystem, redis_server: LocalRedis
) -> None:
    system = await start_system()
    sid = await new_session(system)
    await chat(system, sid, image(data=PNG_A), text("one"))
    await system.channel.close()
    await system.app.stop()
    app = GatewayApp(system.app.config)
    port = await app.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            request = gateway_pb2.ChatRequest(session_id=sid, parts=[text("two")])
            assert answer_of(await collect(stub.Chat(request))) == "u2.."
    finally:
        await app.stop()


async def test_turn_in_flight_at_shutdown_fails_cleanly_and_retries_once(start_system: StartSystem) -> None:
    system = await start_system()
    system.llm.delay, system.llm.chunks = 0.05, 100
    sid = await new_session(system)
    call = system.stub.Chat(gateway_pb2.ChatRequest(session_id=sid, parts=[text("hi")], request_id="r1"))
    async for _ in call:
        break
    await system.app.stop()  # grace 0: the running turn is cut
    with pytest.raises(aio.AioRpcError):
        await collect(call)
    assert await idle(system.llm)
    system.llm.delay, system.llm.chunks = 0.0, 3
    app = GatewayApp(system.app.config)
    port = await app.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            retry = gateway_pb2.ChatRequest(session_id=sid, parts=[text("hi")], request_id="r1")
            first = await collect(stub.Chat(retry))
            again = await collect(stub.Chat(retry))
            session = (await stub.GetSession(gateway_pb2.GetSessionRequest(session_id=sid))).session
    finally:
        await app.stop()
    assert answer_of(first) == "u1.." and not first[0].replayed
    assert again[0].replayed and again[0].text == "u1.."
    assert [m.parts[0].text for m in session.messages] == ["hi", "u1.."]


async def test_session_store_down_is_unavailable_but_generate_works(start_system: StartSystem) -> None:
    system = await start_system(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(aio.AioRpcError) as down:
        await system.stub.CreateSession(gateway_pb2.CreateSessionRequest())
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "session store is unavailable" in (down.value.details() or "")
    assert answer_of(
        await collect(system.stub.Generate(gateway_pb2.GenerateRequest(messages=[user(text("hi"))])))
    )
