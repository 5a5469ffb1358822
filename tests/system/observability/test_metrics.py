"""What a Prometheus scrape of each service shows after a gateway gRPC request, an HTTP request
and a cached-image request: the names other tools scrape, their types and labels, and the values
that moved by exactly what the requests did."""

from __future__ import annotations

import asyncio
import json

import pytest
from vlm.v1 import gateway_pb2

from tests.system.observability.conftest import Observed, Scrape, generate_request, http, png

pytestmark = pytest.mark.asyncio(loop_scope="package")

GATEWAY = {"grpc_service": "vlm.v1.GatewayService", "grpc_method": "Generate", "grpc_type": "server_stream"}
ENCODE = {"grpc_service": "vlm.v1.VisionService", "grpc_method": "Encode", "grpc_type": "unary"}
TOKENS = {"grpc_service": "vlm.v1.LanguageService", "grpc_method": "GenerateTokens"}
CHAT_ROUTE = {"method": "POST", "route": "/v1/chat/completions"}
TYPES = {
    "gateway": {
        "tandem_time_to_first_token_seconds": "histogram",
        "tandem_e2e_request_latency_seconds": "histogram",
        "tandem_grpc_server_handled": "counter",
        "tandem_grpc_server_handling_seconds": "histogram",
        "tandem_http_requests": "counter",
        "tandem_http_request_duration_seconds": "histogram",
        "tandem_session_commits": "counter",
        "tandem_image_fetch_seconds": "histogram",
    },
    "llm": {
        "tandem_time_per_output_token_seconds": "histogram",
        "tandem_num_requests_running": "gauge",
        "tandem_num_requests_waiting": "gauge",
        "tandem_prompt_tokens": "counter",
        "tandem_generation_tokens": "counter",
        "tandem_cached_prompt_tokens": "counter",
        "tandem_grpc_server_handled": "counter",
        "tandem_redis_breaker_open": "gauge",
        "tandem_embedding_fetch_seconds": "histogram",
        "tandem_engine_queue_seconds": "histogram",
        "tandem_engine_prefill_seconds": "histogram",
    },
    "vision": {
        "tandem_vision_cache_hits": "counter",
        "tandem_vision_cache_misses": "counter",
        "tandem_vision_encode_seconds": "histogram",
        "tandem_vision_images_encoded": "counter",
        "tandem_vision_hash_seconds": "histogram",
        "tandem_vision_preprocess_seconds": "histogram",
        "tandem_vision_cache_seconds": "histogram",
        "tandem_grpc_server_handled": "counter",
        "tandem_redis_breaker_open": "gauge",
    },
}


async def _generate(observed: Observed, request: gateway_pb2.GenerateRequest) -> gateway_pb2.GenerateResponse:
    responses = [r async for r in observed.stub.Generate(request, timeout=60)]
    return responses[-1]


def _moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def _observed(before: Scrape, after: Scrape, histogram: str) -> float:
    """How many observations ``histogram`` gained; their sum must have grown too."""
    assert _moved(before, after, f"{histogram}_sum") > 0, histogram
    return _moved(before, after, f"{histogram}_count")


async def test_a_scrape_shows_what_grpc_http_and_a_cached_image_did(observed: Observed) -> None:
    before = await observed.scrape_all()
    image = png(101, (64, 48))
    first = await _generate(observed, generate_request(image, "What is this?", max_new_tokens=4))
    # the same bytes again: a cache hit
    again = await _generate(observed, generate_request(image, "And now?", max_new_tokens=4))
    status, _, body = await asyncio.to_thread(
        http,
        "POST",
        f"{observed.http_base}/v1/chat/completions",
        {"model": observed.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    )
    assert status == 200
    usages = [
        (first.usage.prompt_tokens, first.usage.completion_tokens),
        (again.usage.prompt_tokens, again.usage.completion_tokens),
        tuple(json.loads(body)["usage"][k] for k in ("prompt_tokens", "completion_tokens")),
    ]
    after = await observed.scrape_all()

    for service, types in TYPES.items():
        for name, kind in types.items():
            assert after[service].types.get(name) == kind, (service, name)

    gateway = before["gateway"], after["gateway"]
    assert _moved(*gateway, "tandem_grpc_server_handled_total", grpc_code="OK", **GATEWAY) == 2
    assert _moved(*gateway, "tandem_http_requests_total", status="200", **CHAT_ROUTE) == 1
    assert _moved(*gateway, "tandem_time_to_first_token_seconds_count") == 3
    assert _moved(*gateway, "tandem_e2e_request_latency_seconds_count") == 3
    assert _moved(*gateway, "tandem_http_request_duration_seconds_count", **CHAT_ROUTE) == 1
    assert _observed(*gateway, "tandem_image_fetch_seconds") == 2  # one per image sent

    vision = before["vision"], after["vision"]
    assert _moved(*vision, "tandem_vision_cache_misses_total") == 1
    assert _moved(*vision, "tandem_vision_cache_hits_total") == 1  # the second request
    assert _moved(*vision, "tandem_vision_images_encoded_total") == 1
    assert _moved(*vision, "tandem_vision_encode_seconds_count") == 1
    # the stages of B4's breakdown: both images hashed and looked up, the new one preprocessed
    assert _observed(*vision, "tandem_vision_hash_seconds") == 2
    assert _observed(*vision, "tandem_vision_cache_seconds") == 2
    assert _observed(*vision, "tandem_vision_preprocess_seconds") == 1
    assert _moved(*vision, "tandem_grpc_server_handled_total", grpc_code="OK", **ENCODE) == 2
    assert after["vision"].value("tandem_redis_breaker_open", role="cache") == 0

    llm = before["llm"], after["llm"]
    assert _moved(*llm, "tandem_grpc_server_handled_total", grpc_code="OK", **TOKENS) == 3
    assert _moved(*llm, "tandem_prompt_tokens_total") == sum(p for p, _ in usages)
    assert _moved(*llm, "tandem_generation_tokens_total") == sum(c for _, c in usages)
    assert _moved(*llm, "tandem_time_per_output_token_seconds_count") == sum(c - 1 for _, c in usages)
    assert _moved(*llm, "tandem_request_success_total") == 3
    assert after["llm"].value("tandem_num_requests_running") == 0
    assert after["llm"].value("tandem_num_requests_waiting") == 0
    assert _moved(*llm, "tandem_vision_cache_hits_total") == 2  # the language side read both embeddings
    assert _observed(*llm, "tandem_embedding_fetch_seconds") == 2  # the text-only request reads none
    assert _observed(*llm, "tandem_engine_queue_seconds") == 3
    assert _observed(*llm, "tandem_engine_prefill_seconds") >= 3


async def test_every_service_counts_grpc_calls_by_method_and_code(observed: Observed) -> None:
    bad = gateway_pb2.GetSessionRequest(session_id="not-a-session")
    with pytest.raises(Exception, match="NOT_FOUND"):
        await observed.stub.GetSession(bad, timeout=10)
    scrapes = await observed.scrape_all()
    session = {"grpc_method": "GetSession", "grpc_code": "NOT_FOUND"}
    assert scrapes["gateway"].value("tandem_grpc_server_handled_total", **session) >= 1
    for service, scrape in scrapes.items():
        labels = scrape.labels("tandem_grpc_server_handled_total")
        assert labels, service
        assert all({"grpc_service", "grpc_method", "grpc_type", "grpc_code"} <= set(ls) for ls in labels)


async def test_worker_metrics_endpoints_answer_in_the_negotiated_format(observed: Observed) -> None:
    for service in ("vision", "llm"):
        status, headers, body = await asyncio.to_thread(http, "GET", observed.metrics_urls[service])
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert b"# TYPE tandem_grpc_server_handled" in body
        status, headers, body = await asyncio.to_thread(
            http,
            "GET",
            observed.metrics_urls[service],
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")
