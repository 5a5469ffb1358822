"""Optional OpenTelemetry tracing of one service, off unless the standard ``OTEL_*`` variables ask.

``Tracing.from_env`` turns tracing on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``
or ``console``; ``none`` is off) or, without it, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; ``OTEL_SDK_DISABLED=true`` wins over both. The
SDK reads the rest of the standard variables itself (endpoint, headers, sampler, batch sizes,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``). A disabled ``Tracing`` does nothing and
OpenTelemetry is never imported (it is the optional ``tandem[tracing]`` extra).

Each service owns one ``Tracing`` with its own ``TracerProvider`` (nothing global, so the three
services can trace in one test process). Spans are started with an explicit parent and never
made "current": a request's spans hang off its server span, which ``RequestContext`` carries,
and async generators that cross ``yield`` need no context to attach and detach. The parent of a
server span comes from the caller's W3C ``traceparent`` (gRPC metadata, HTTP headers);
``headers`` writes it for the next hop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Literal

log = logging.getLogger(__name__)

SpanKind = Literal["server", "client", "internal"]
EXPORTERS = ("otlp", "console")


def exporter_from_env(env: Mapping[str, str]) -> str | None:
    """The trace exporter the ``OTEL_*`` variables of ``env`` ask for, or None (tracing off)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:
        return None if names[0] == "none" else names[0]
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


class Tracing:
    """Spans of one service; ``Tracing()`` is the disabled one. See the module docstring."""

    def __init__(self, provider: Any = None):
        self._provider = provider
        self._tracer = provider.get_tracer("tandem") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str]) -> Tracing:
        """Tracing as ``env`` asks; ``service`` is the resource's ``service.name`` (unless
        ``OTEL_SERVICE_NAME`` says otherwise). Off, with a warning, when the SDK is missing."""
        exporter = exporter_from_env(env)
        if exporter is None:
            return cls()
        if exporter not in EXPORTERS:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (%s); tracing is off", exporter, EXPORTERS)
            return cls()
        try:
            provider = _provider(env.get("OTEL_SERVICE_NAME") or service, _exporter(exporter), batch=True)
        except ImportError as exc:
            log.warning("tracing asked by OTEL_* but %s; pip install 'tandem[tracing]'", exc)
            return cls()
        log.info("tracing on: %s exporter, service %s", exporter, service)
        return cls(provider)

    @classmethod
    def to_exporter(cls, service: str, exporter: Any) -> Tracing:
        """Tracing into ``exporter``, span by span (tests: an ``InMemorySpanExporter``)."""
        return cls(_provider(service, exporter, batch=False))

    def start(
        self,
        name: str,
        kind: SpanKind = "internal",
        parent: Any = None,
        carrier: Mapping[str, str] | None = None,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> Any:
        """A started span (the caller ends it), or None when disabled. Its parent is ``parent``
        (a span), else the remote span whose W3C headers are in ``carrier``, else none."""
        if self._tracer is None:
            return None
        from opentelemetry import propagate, trace

        context: Any = None
        if parent is not None:
            context = trace.set_span_in_context(parent)
        else:
            context = propagate.extract(dict(carrier)) if carrier else None
        kinds = {"server": trace.SpanKind.SERVER, "client": trace.SpanKind.CLIENT}
        return self._tracer.start_span(
            name, context, kinds.get(kind, trace.SpanKind.INTERNAL), dict(attributes or {})
        )

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        kind: SpanKind = "internal",
        parent: Any = None,
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> Iterator[Any]:
        """``start`` for the body; an exception marks the span as failed and propagates."""
        span = self.start(name, kind, parent, attributes=attributes)
        try:
            yield span
        except BaseException as exc:
            fail(span, type(exc).__name__)
            raise
        finally:
            end(span)

    def headers(self, span: Any) -> list[tuple[str, str]]:
        """The W3C trace headers (``traceparent``, ``tracestate``) naming ``span`` as the parent."""
        if span is None:
            return []
        from opentelemetry import propagate, trace

        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return sorted(carrier.items())

    def shutdown(self) -> None:
        """Export what is buffered and stop (at process exit)."""
        if self._provider is not None:
            self._provider.shutdown()


def fail(span: Any, description: str) -> None:
    """Mark ``span`` (or None) as failed."""
    if span is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, description))


def end(span: Any) -> None:
    """End ``span`` (or None)."""
    if span is not None:
        span.end()


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _provider(service: str, exporter: Any, batch: bool) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}), shutdown_on_exit=batch)
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return provider
