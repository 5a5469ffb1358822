"""The outermost interceptor of every Tandem server: request id, server span, metrics, access log.

For every call, whatever its type (unary, server, client or bidirectional streaming):

1. the request id is the caller's ``x-request-id`` metadata (if sane) or a new one; it is bound
   to the handler's task (``tandem.serving.request_context``: log lines, downstream calls) and
   sent back first, as initial metadata ``x-request-id``;
2. a server span starts, child of the caller's W3C ``traceparent`` (health and reflection calls
   are not traced);
3. when the call ends: ``tandem_grpc_server_handled_total{grpc_service, grpc_method, grpc_type,
   grpc_code}`` and ``tandem_grpc_server_handling_seconds``, the span's status, and one
   access-log line.

It sits before the auth and error interceptors, so refused calls and mapped errors are counted
with the status the caller got.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from tandem.metrics import Metrics
from tandem.serving.access_log import is_quiet, log_access
from tandem.serving.handlers import rewrap
from tandem.serving.request_context import REQUEST_ID_KEY, RequestContext, bind, request_id_from, unbind
from tandem.serving.tracing import Tracing, end, fail

# Status codes that mean the server failed (OpenTelemetry's rule for server spans).
_SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}


@dataclass
class _Call:
    """One call in flight: its labels, request context and span."""

    labels: dict[str, str]
    context: RequestContext


def _status(context: aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    """The status the caller gets: the one the handler set or aborted with, else from ``exc``."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN


class RequestInterceptor(aio.ServerInterceptor):
    """See the module docstring; one per server, with the service's metrics and tracing."""

    def __init__(self, metrics: Metrics, tracing: Tracing):
        self.metrics = metrics
        self.tracing = tracing

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        details = handler_call_details
        return rewrap(
            handler,
            unary=lambda behavior, kind: self._unary(behavior, details, kind),
            stream=lambda behavior, kind: self._stream(behavior, details, kind),
        )

    def _begin(self, details: grpc.HandlerCallDetails, grpc_type: str) -> _Call:
        method = details.method
        service, _, name = method.lstrip("/").rpartition("/")
        metadata = {k: v for k, v in details.invocation_metadata or () if isinstance(v, str)}
        context = RequestContext(request_id_from(metadata.get(REQUEST_ID_KEY)), method, self.tracing)
        if not is_quiet("grpc", method):
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            context.span = self.tracing.start(
                method.lstrip("/"), "server", carrier=metadata, attributes=attributes
            )
        labels = {"grpc_service": service, "grpc_method": name, "grpc_type": grpc_type}
        self.metrics.inc("grpc_server_started", **labels)
        return _Call(labels, context)

    async def _open(self, call: _Call, context: aio.ServicerContext) -> Any:
        token = bind(call.context)
        await context.send_initial_metadata(((REQUEST_ID_KEY, call.context.request_id),))
        return token

    def _end(self, call: _Call, code: grpc.StatusCode, token: Any) -> None:
        seconds = time.monotonic() - call.context.started
        self.metrics.inc("grpc_server_handled", grpc_code=code.name, **call.labels)
        self.metrics.observe("grpc_server_handling_seconds", seconds, **call.labels)
        span = call.context.span
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_ERRORS:
                fail(span, code.name)
        end(span)
        log_access(call.context, "grpc", call.context.method, code.name, seconds)
        if token is not None:
            with contextlib.suppress(ValueError):  # an abandoned stream closed from another context
                unbind(token)

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], details: grpc.HandlerCallDetails, grpc_type: str
    ) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: aio.ServicerContext) -> Any:
            call, token, error = self._begin(details, grpc_type), None, None
            try:
                token = await self._open(call, context)
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._end(call, _status(context, error), token)

        return handler

    def _stream(
        self, behavior: Callable[..., Any], details: grpc.HandlerCallDetails, grpc_type: str
    ) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):
            # A coroutine that streams with ``context.write`` (e.g. grpc's own Health.Watch).
            return self._unary(behavior, details, grpc_type)

        async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            call, token, error = self._begin(details, grpc_type), None, None
            try:
                token = await self._open(call, context)
                async with contextlib.aclosing(behavior(request, context)) as items:
                    async for item in items:
                        yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._end(call, _status(context, error), token)

        return handler
