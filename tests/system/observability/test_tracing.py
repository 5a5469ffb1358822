"""One trace per request across the three services: gateway -> vision -> Redis -> language, with
the W3C context carried in gRPC metadata and every span's parent the span that caused it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from tests.support.waiting import eventually
from tests.system.observability.conftest import Observed, generate_request, http, png

pytestmark = pytest.mark.asyncio(loop_scope="package")


def _service(span: Any) -> str:
    return str(span.resource.attributes["service.name"])


def _one(spans: Sequence[Any], service: str, name: str) -> Any:
    (found,) = [s for s in spans if _service(s) == service and s.name == name]
    return found


async def _finished(observed: Observed, *wanted: tuple[str, str]) -> Sequence[Any]:
    """The finished spans, once each (service, name) of ``wanted`` is among them: a server span
    ends once its status went out, and the gateway does not wait for the language service's."""

    def have() -> set[tuple[str, str]]:
        return {(_service(s), s.name) for s in observed.spans.get_finished_spans()}

    await eventually(lambda: set(wanted) <= have())
    return observed.spans.get_finished_spans()


def _child_of(span: Any, parent: Any) -> bool:
    return span.parent is not None and span.parent.span_id == parent.context.span_id


async def test_a_request_is_one_trace_across_the_three_services(observed: Observed) -> None:
    observed.spans.clear()
    call = observed.stub.Generate(
        generate_request(png(401, (40, 56)), "Hi", max_new_tokens=2),
        metadata=(("x-request-id", "obs-trace-1"),),
        timeout=60,
    )
    [r async for r in call]
    spans = await _finished(
        observed,
        ("tandem-gateway", "vlm.v1.GatewayService/Generate"),
        ("tandem-llm", "vlm.v1.LanguageService/GenerateTokens"),
    )
    root = _one(spans, "tandem-gateway", "vlm.v1.GatewayService/Generate")
    trace = [s for s in spans if s.context.trace_id == root.context.trace_id]
    assert {_service(s) for s in trace} == {"tandem-gateway", "tandem-vision", "tandem-llm"}
    assert root.parent is None and len({s.context.span_id for s in trace}) == len(trace)

    encode_call = _one(trace, "tandem-gateway", "vlm.v1.VisionService/Encode")
    tokens_call = _one(trace, "tandem-gateway", "vlm.v1.LanguageService/GenerateTokens")
    encode = _one(trace, "tandem-vision", "vlm.v1.VisionService/Encode")
    tokens = _one(trace, "tandem-llm", "vlm.v1.LanguageService/GenerateTokens")
    assert _child_of(encode_call, root) and _child_of(tokens_call, root)
    assert _child_of(encode, encode_call) and _child_of(tokens, tokens_call)  # across processes' boundary
    assert encode.attributes["rpc.grpc.status_code"] == 0

    vision_redis = [s for s in trace if _service(s) == "tandem-vision" and s.name.startswith("cache ")]
    assert {"cache get_header", "cache put"} <= {s.name for s in vision_redis}
    assert all(_child_of(s, encode) and s.attributes["db.system"] == "redis" for s in vision_redis)
    llm_redis = [s for s in trace if _service(s) == "tandem-llm" and s.name.startswith("cache ")]
    assert llm_redis and all(_child_of(s, tokens) for s in llm_redis)  # the embedding read
    order = sorted([encode, *vision_redis, tokens], key=lambda s: s.start_time)
    assert order[0] is encode and order[-1] is tokens  # vision (and its Redis) before language


async def test_an_http_request_continues_the_callers_trace(observed: Observed) -> None:
    observed.spans.clear()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    body = {"model": observed.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
    await asyncio.to_thread(http, "POST", f"{observed.http_base}/v1/chat/completions", body, headers)
    spans = await _finished(
        observed,
        ("tandem-gateway", "POST /v1/chat/completions"),
        ("tandem-llm", "vlm.v1.LanguageService/GenerateTokens"),
    )
    server = _one(spans, "tandem-gateway", "POST /v1/chat/completions")
    assert f"{server.context.trace_id:032x}" == trace_id and f"{server.parent.span_id:016x}" == parent_id
    assert server.attributes["http.response.status_code"] == 200
    tokens = _one(spans, "tandem-llm", "vlm.v1.LanguageService/GenerateTokens")
    assert tokens.context.trace_id == server.context.trace_id


async def test_probes_and_scrapes_are_not_traced(observed: Observed) -> None:
    observed.spans.clear()
    await asyncio.to_thread(http, "GET", f"{observed.http_base}/healthz")
    await asyncio.to_thread(http, "GET", observed.metrics_urls["gateway"])
    assert observed.spans.get_finished_spans() == ()
