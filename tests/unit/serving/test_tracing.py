"""Tracing is on only when the standard OTEL_* variables ask, and needs nothing (OpenTelemetry
is an optional extra) when off; spans link through W3C headers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tandem.serving import request_context
from tandem.serving.tracing import Tracing, exporter_from_env
from tests.support import ROOT


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, "otlp"),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, None),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_SERVICE_NAME": "x"}, None),
    ],
)
def test_the_environment_decides(env: dict[str, str], exporter: str | None) -> None:
    assert exporter_from_env(env) == exporter


def test_an_unsupported_exporter_leaves_tracing_off() -> None:
    assert not Tracing.from_env("svc", {"OTEL_TRACES_EXPORTER": "zipkin"}).enabled


def test_console_tracing_names_the_service() -> None:
    tracing = Tracing.from_env("tandem-x", {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "mine"})
    try:
        assert tracing.enabled
        span = tracing.start("s")
        assert span.resource.attributes["service.name"] == "mine"
        span.end()
    finally:
        tracing.shutdown()


def test_disabled_or_missing_opentelemetry_is_never_needed() -> None:
    """With OpenTelemetry made unimportable (as when the extra is not installed), the services
    import, requests get ids and no-op spans, and an OTEL_* environment only warns."""
    script = """
import sys
sys.modules["opentelemetry"] = None  # any import of it fails
from tandem.serving.tracing import Tracing
from tandem.serving import request_context
import gateway.app, llm_service.server, vision_service.app
PARENT = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
for env in ({}, {"OTEL_TRACES_EXPORTER": "otlp"}):
    tracing = Tracing.from_env("x", env)
    context = request_context.RequestContext("id", "/m", tracing)
    context.span = tracing.start("s", "server", carrier={"traceparent": PARENT})
    request_context.bind(context)
    with request_context.outgoing("call") as metadata, request_context.span("child"):
        assert metadata == [("x-request-id", "id")], metadata
    tracing.shutdown()
    assert not tracing.enabled and context.span is None
"""
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'protos'}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pip install 'tandem[tracing]'" in done.stderr


def test_spans_link_through_w3c_headers_and_the_request_context() -> None:
    exporter = InMemorySpanExporter()
    caller, callee = Tracing.to_exporter("a", exporter), Tracing.to_exporter("b", exporter)
    root = caller.start("root", "server")
    context = request_context.RequestContext("rid", "/m", caller, span=root)
    token = request_context.bind(context)
    try:
        with request_context.outgoing("call") as metadata:
            carrier = dict(metadata)
            assert carrier["x-request-id"] == "rid" and carrier["traceparent"].startswith("00-")
            remote = callee.start("served", "server", carrier=carrier)
            remote.end()
    finally:
        request_context.unbind(token)
    root.end()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["served"].parent.span_id == spans["call"].context.span_id
    assert spans["call"].parent.span_id == spans["root"].context.span_id
    assert len({s.context.trace_id for s in spans.values()}) == 1


def test_a_failing_body_marks_its_span() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.to_exporter("a", exporter)
    with pytest.raises(KeyError), tracing.span("boom"):
        raise KeyError("x")
    (span,) = exporter.get_finished_spans()
    assert not span.status.is_ok and span.status.description == "KeyError"
