"""One access-log line per request in each service, and the request id on every hop: the id the
client sent (gRPC metadata or HTTP header) is echoed back and carried by the log lines of the
gateway, the vision service and the language service; a request without one gets a new id."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from vlm.v1 import gateway_pb2

from tandem.serving.logs import ACCESS_LOGGER
from tests.support.waiting import eventually
from tests.system.observability.conftest import Observed, generate_request, http, png

pytestmark = pytest.mark.asyncio(loop_scope="package")

SERVICES = ("gateway", "vision_service", "llm_service", "tandem")


async def _access(
    records: list[logging.LogRecord], request_id: str, methods: set[str]
) -> dict[str, dict[str, object]]:
    """The access fields of ``request_id``'s lines, by method, once ``methods`` all wrote theirs (a
    service writes its line after its status went out, and the gateway does not wait for the
    language service's status)."""

    def lines() -> list[logging.LogRecord]:
        return [r for r in records if r.name == ACCESS_LOGGER and r.request_id == request_id]  # type: ignore[attr-defined]

    await eventually(lambda: methods <= {r.access["method"] for r in lines()})  # type: ignore[attr-defined]
    by_method = {r.access["method"]: r.access for r in lines()}  # type: ignore[attr-defined]
    assert len(by_method) == len(lines()), "one line per request and service"
    return by_method


async def test_grpc_request_id_is_echoed_and_on_every_hop(
    observed: Observed, logs: pytest.LogCaptureFixture
) -> None:
    request_id = "obs-grpc-7f3a"
    call = observed.stub.Generate(
        generate_request(png(201, (48, 48)), "Hi", max_new_tokens=3),
        metadata=(("x-request-id", request_id),),
        timeout=60,
    )
    responses = [r async for r in call]
    assert dict(await call.initial_metadata())["x-request-id"] == request_id

    hops = {
        "/vlm.v1.GatewayService/Generate",
        "/vlm.v1.VisionService/Encode",
        "/vlm.v1.LanguageService/GenerateTokens",
    }
    access = await _access(logs.records, request_id, hops)
    assert set(access) == hops
    usage = responses[-1].usage
    for method, fields in access.items():
        assert fields["protocol"] == "grpc" and fields["status"] == "OK", method
        assert isinstance(fields["duration_ms"], float) and fields["tenant"] == ""
    for method in ("/vlm.v1.GatewayService/Generate", "/vlm.v1.LanguageService/GenerateTokens"):
        fields = access[method]
        assert (fields["prompt_tokens"], fields["completion_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        assert isinstance(fields["ttft_ms"], float) and fields["ttft_ms"] <= fields["duration_ms"]  # type: ignore[operator]

    # Every line the services wrote for it carries the id, not only the access lines: the
    # language worker's, its engine thread's, and the vision preprocessing pool's (PIL's).
    ours = [
        r
        for r in logs.records
        if r.name.split(".")[0] in SERVICES and (r.name != ACCESS_LOGGER or r.access["method"] in access)  # type: ignore[attr-defined]
    ]  # (the gateway's polls of its workers are requests of their own)
    assert {r.request_id for r in ours} == {request_id}  # type: ignore[attr-defined]
    assert {"llm_service.worker", "llm_service.engine.scheduler"} <= {r.name for r in ours}
    decoding = [r for r in logs.records if r.name.startswith("PIL.")]
    assert decoding and {r.request_id for r in decoding} == {request_id}  # type: ignore[attr-defined]
    text = "\n".join(logs.text.splitlines())
    assert re.search(r"grpc /vlm.v1.VisionService/Encode OK \d+\.\dms", text)


async def test_http_request_id_is_echoed_and_reaches_the_workers(
    observed: Observed, logs: pytest.LogCaptureFixture
) -> None:
    request_id = "obs-http-41c2"
    body = {"model": observed.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    url = f"{observed.http_base}/v1/chat/completions"
    status, headers, _ = await asyncio.to_thread(http, "POST", url, body, {"X-Request-Id": request_id})
    assert status == 200 and headers["X-Request-Id"] == request_id

    hops = {"POST /v1/chat/completions", "/vlm.v1.LanguageService/GenerateTokens"}
    access = await _access(logs.records, request_id, hops)
    assert set(access) == hops
    line = access["POST /v1/chat/completions"]
    assert line["protocol"] == "http" and line["status"] == "200" and line["completion_tokens"]


async def test_a_missing_or_unusable_request_id_is_replaced(observed: Observed) -> None:
    url = f"{observed.http_base}/v1/models"
    _, headers, _ = await asyncio.to_thread(http, "GET", url)
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])
    _, headers, _ = await asyncio.to_thread(http, "GET", url, None, {"X-Request-Id": "two words\tand a tab"})
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])
    stream = {"model": observed.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    _, headers, _ = await asyncio.to_thread(
        http,
        "POST",
        f"{url.rsplit('/', 1)[0]}/chat/completions",
        {**stream, "stream": True},
        {"X-Request-Id": "s-1"},
    )
    assert headers["X-Request-Id"] == "s-1"  # a streamed answer carries it too
    call = observed.stub.GetModelInfo(gateway_pb2.GetModelInfoRequest(), timeout=10)
    await call
    assert re.fullmatch(r"[0-9a-f]{32}", dict(await call.initial_metadata())["x-request-id"])
