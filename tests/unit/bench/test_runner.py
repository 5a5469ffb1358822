"""The serving runner against a small fake OpenAI server (aiohttp on port 0): what each request
sends (history re-sent, or a session id and the new turn only), and what the client reads back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tandem.bench.dataset import DatasetConfig, build_dataset
from tandem.bench.metrics import RequestRecord
from tandem.bench.runner import ServeConfig, ServeRunner


@dataclass
class FakeServer:
    """Streams ``max_tokens`` chunks ``"w0 "``, ``"w1 "``...; a role-only chunk first."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    fail_status: int | None = None
    headers: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/v1/models", self.models),
                web.post("/v1/sessions", self.create),
                web.delete("/v1/sessions/{sid}", self.delete),
                web.post("/v1/chat/completions", self.chat),
            ]
        )
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake-model"}, {"id": "other"}]})

    async def create(self, request: web.Request) -> web.Response:
        self.sessions.append(f"s{len(self.sessions)}")
        return web.json_response({"id": self.sessions[-1], "object": "session"})

    async def delete(self, request: web.Request) -> web.Response:
        self.deleted.append(request.match_info["sid"])
        return web.json_response({})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(request.headers.get("Authorization", ""))
        if self.fail_status:
            return web.json_response({"error": {"message": "boom"}}, status=self.fail_status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
        chunks += [
            {"choices": [{"index": 0, "delta": {"content": f"w{i} "}}]} for i in range(body["max_tokens"])
        ]
        chunks.append({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": body["max_tokens"]}})
        for chunk in chunks:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _serve(fake: FakeServer) -> tuple[web.AppRunner, str]:
    """``fake`` listening on a free local port: its runner (to clean up) and base URL."""
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeServer, str]]:
    fake = FakeServer()
    runner, url = await _serve(fake)
    try:
        yield fake, url
    finally:
        await runner.cleanup()


async def run(url: str, turns: int = 1, n: int = 3, **kw: Any) -> tuple[list[RequestRecord], str]:
    dataset = DatasetConfig(name="random-mm", num_conversations=n, turns=turns, output_len=4, prompt_len=5)
    config = ServeConfig(base_url=url, dataset=dataset, max_concurrency=2, **kw)
    seen: list[RequestRecord] = []
    measured, warm = build_dataset(dataset, warmup=config.warmups)
    outcome = await ServeRunner(config, seen.append).run(measured, warm)
    assert seen == outcome.records and outcome.duration_s > 0
    return outcome.records, outcome.model


async def test_records_tokens_and_timings_and_the_first_model(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    records, model = await run(url, ignore_eos=True, api_key="k3y")
    assert model == "fake-model"
    assert len(records) == 3 and all(r.success for r in records)
    for r in records:
        assert (r.output_tokens, r.prompt_tokens, r.text) == (4, 7, "w0 w1 w2 w3 ")
        assert len(r.itl) == 3 and 0 < r.ttft <= r.latency
    assert len(fake.bodies) == 4  # one warm-up
    body = fake.bodies[-1]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["max_tokens"] == 4 and body["model"] == "fake-model"
    parts = body["messages"][0]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"].startswith(
        "data:image/jpeg;base64,"
    )
    assert parts[1]["type"] == "text"
    assert set(fake.headers) == {"Bearer k3y"}


async def test_history_is_re_sent_with_the_replies(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    records, _ = await run(url, turns=3, n=1, warmups=0, model="m")
    assert [r.turn for r in records] == [0, 1, 2]
    roles = [[m["role"] for m in body["messages"]] for body in fake.bodies]
    assert roles == [
        ["user"],
        ["user", "assistant", "user"],
        ["user", "assistant", "user", "assistant", "user"],
    ]
    assert fake.bodies[2]["messages"][1] == {"role": "assistant", "content": "w0 w1 w2 w3 "}
    assert fake.bodies[2]["messages"][0] == fake.bodies[0]["messages"][0]
    assert isinstance(fake.bodies[1]["messages"][2]["content"], str)  # later turns are text only
    assert all("session_id" not in body for body in fake.bodies)


async def test_sessions_send_only_the_new_turn(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    await run(url, turns=3, n=2, warmups=0, sessions=True)
    assert sorted(fake.sessions) == sorted(fake.deleted) == ["s0", "s1"]
    assert all(len(body["messages"]) == 1 for body in fake.bodies)
    by_session = {sid: [b for b in fake.bodies if b["session_id"] == sid] for sid in fake.sessions}
    assert all(len(bodies) == 3 for bodies in by_session.values())


async def test_a_failed_request_is_recorded_and_ends_its_conversation(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    fake.fail_status = 503
    records, _ = await run(url, turns=2, n=2, warmups=0)
    assert len(records) == 4 and not any(r.success for r in records)
    assert len(fake.bodies) == 2  # the second turns were never sent
    assert "HTTP 503" in records[0].error
    assert {r.error for r in records if r.turn == 1} == {"skipped: turn 0 failed"}


async def test_a_failed_warm_up_stops_the_run(server: tuple[FakeServer, str]) -> None:
    fake, url = server
    fake.fail_status = 500
    with pytest.raises(RuntimeError, match="warm-up request failed: ServerError: HTTP 500"):
        await run(url)


async def test_replicas_take_whole_conversations_round_robin(server: tuple[FakeServer, str]) -> None:
    first, url = server
    second = FakeServer()
    runner, second_url = await _serve(second)
    try:
        records, _ = await run(url, turns=2, n=4, warmups=0, more_base_urls=(second_url,))
    finally:
        await runner.cleanup()
    assert len(records) == 8 and all(r.success for r in records)
    assert len(first.bodies) == len(second.bodies) == 4  # conversations 0, 2 and 1, 3: two turns each
    # a conversation stays on its replica: its second turn re-sends the first turn's reply there
    for fake in (first, second):
        assert [len(body["messages"]) for body in fake.bodies].count(3) == 2
