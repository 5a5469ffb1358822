"""The request being served: its id, its server span and what its access-log line reports.

Every call a service receives gets a ``RequestContext``, bound to the handler's task by the
gRPC interceptor (``tandem.serving.request_interceptor``) or the HTTP middleware
(``tandem.serving.http_access``), and read from anywhere below without passing it around:

- ``current_request_id()`` for log lines (``tandem.serving.logs`` adds it to every record);
- ``outgoing(...)``: a client span and the metadata a call to another service carries
  (``x-request-id``, W3C ``traceparent``), so the next service logs and traces the same request;
- ``span(...)``: a child span of the request (e.g. a Redis read);
- ``first_output()`` / ``usage(...)``: figures for the access-log line.

The request id is the caller's (``x-request-id`` metadata, ``X-Request-Id`` header) when it is
a sane token, else a new one; the service echoes it back. Outside a request (start-up, warm-up,
the engine thread) there is no context and these helpers do nothing.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from tandem.serving.tracing import SpanKind, Tracing

REQUEST_ID_KEY = "x-request-id"  # gRPC metadata key (lower case); HTTP: X-Request-Id
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def request_id_from(given: str | bytes | None) -> str:
    """The caller's request id if it is a sane token (no spaces or control characters, at
    most 128 characters: it goes into log lines), else a new random one."""
    if isinstance(given, bytes):
        given = given.decode("ascii", "replace")
    if given and _SANE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


@dataclass
class RequestContext:
    """One request in one service; ``tenant`` stays "" until API keys name tenants."""

    request_id: str
    method: str
    tracing: Tracing = field(default_factory=Tracing)
    span: Any = None
    started: float = field(default_factory=time.monotonic)
    tenant: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_seconds: float | None = None

    def first_output(self) -> None:
        """Note the time to the first output token (only the first call counts)."""
        if self.ttft_seconds is None:
            self.ttft_seconds = time.monotonic() - self.started

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens

    def access_fields(self) -> dict[str, Any]:
        """What the access-log line says about the request (besides its status and duration)."""
        return {
            "request_id": self.request_id,
            "tenant": self.tenant,
            "method": self.method,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": None if self.ttft_seconds is None else round(self.ttft_seconds * 1000, 1),
        }


_CURRENT: ContextVar[RequestContext | None] = ContextVar("tandem_request", default=None)


def bind(context: RequestContext) -> Token[RequestContext | None]:
    """Make ``context`` the current request of this task (``unbind`` with the token)."""
    return _CURRENT.set(context)


def unbind(token: Token[RequestContext | None]) -> None:
    _CURRENT.reset(token)


def current() -> RequestContext | None:
    return _CURRENT.get()


def current_request_id() -> str:
    """The current request's id, or "" outside a request."""
    context = _CURRENT.get()
    return context.request_id if context is not None else ""


def first_output() -> None:
    """``RequestContext.first_output`` of the current request, if any."""
    if (context := _CURRENT.get()) is not None:
        context.first_output()


def usage(prompt_tokens: int, completion_tokens: int) -> None:
    """``RequestContext.usage`` of the current request, if any."""
    if (context := _CURRENT.get()) is not None:
        context.usage(prompt_tokens, completion_tokens)


@contextlib.contextmanager
def span(
    name: str, kind: SpanKind = "internal", attributes: Mapping[str, str | int | float | bool] | None = None
) -> Iterator[Any]:
    """A child span of the current request for the body (nothing outside a request)."""
    context = _CURRENT.get()
    if context is None or context.span is None:
        yield None
        return
    with context.tracing.span(name, kind, context.span, attributes) as child:
        yield child


@contextlib.contextmanager
def outgoing(
    name: str, attributes: Mapping[str, str | int | float | bool] | None = None
) -> Iterator[list[tuple[str, str]]]:
    """A client span for a call to another service; yields the metadata the call must carry
    (the request id and the trace headers), empty outside a request."""
    context = _CURRENT.get()
    if context is None:
        yield []
        return
    with span(name, "client", attributes) as client:
        yield [(REQUEST_ID_KEY, context.request_id), *context.tracing.headers(client)]
