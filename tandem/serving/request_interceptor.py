"""The outermost interceptor of every Tandem server: request id, server span, metrics, access log.

For every call, whatever its type (unary, server, client or bidirectional streaming):

1. the request id is the caller's ``x-request-id`` metadata (if sane) or a new one; it is bound
   to the handler's task (``tandem.serving.request_context``: log lines, downstream calls) and
   sent back first, as initial metadata ``x-request-id``. The handler does not wait for that
   send (``_MetadataFirst``): it starts at once, and anything that sends on the call (a response,
   ``write``, ``abort``, the status) waits for it first. Waiting before the handler would put a
   round trip through gRPC's poller in front of every request's work on every hop;
2. a server span starts, child of the caller's W3C ``traceparent`` (health and reflection calls
   are not traced);
3. when the call ends: ``tandem_grpc_server_handled_total{grpc_service, grpc_method, grpc_type,
   grpc_code}`` and ``tandem_grpc_server_handling_seconds``, the span's status, and one
   access-log line. These are written once grpc.aio is done with the call (its done callback),
   so the status does not wait for a log line; the duration is taken when the handler ends.

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
from typing import Any, NoReturn

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


class _MetadataFirst:
    """The servicer context a wrapped handler sees while its initial metadata is on its way.

    grpc.aio sends initial metadata in a batch of its own and has no way to attach custom
    metadata to the first response, so a handler that awaited the send would pay a round trip
    before doing anything. Here the send is a task started with the call; ``write`` and ``abort``
    wait for it, and the interceptor waits for it before a response or the status goes out, so
    the order on the wire is unchanged (two sends of initial metadata would fail the call).
    Everything else is the call's own context.
    """

    def __init__(self, context: aio.ServicerContext, metadata: tuple[tuple[str, str], ...]):
        self._context = context
        self._sending = asyncio.ensure_future(context.send_initial_metadata(metadata))
        # a failed send (the client left) is retrieved here, whoever waits for it or not
        self._sending.add_done_callback(lambda task: task.cancelled() or task.exception())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def sent(self) -> None:
        """Once the initial metadata has gone (or failed: a call the client has left fails its
        next send on its own)."""
        if not self._sending.done():
            await asyncio.wait((self._sending,))

    async def send_initial_metadata(self, metadata: Any) -> None:
        raise RuntimeError("the request interceptor sends the initial metadata (x-request-id)")

    async def write(self, message: Any) -> None:
        await self.sent()
        await self._context.write(message)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        await self.sent()
        await self._context.abort(code, details, trailing_metadata)
        raise AssertionError("abort returned")  # grpc.aio's abort always raises


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

    def _open(self, call: _Call, context: aio.ServicerContext) -> tuple[Any, _MetadataFirst]:
        """Bind the request context; start sending the request id. The context to pass on."""
        token = bind(call.context)
        return token, _MetadataFirst(context, ((REQUEST_ID_KEY, call.context.request_id),))

    def _end(
        self, call: _Call, context: aio.ServicerContext, error: BaseException | None, token: Any
    ) -> None:
        """The handler ended: unbind its request context, and account for the call once grpc.aio
        has sent its status."""
        code, seconds = _status(context, error), time.monotonic() - call.context.started
        if token is not None:
            with contextlib.suppress(ValueError):  # an abandoned stream closed from another context
                unbind(token)
        # grpc-stubs type the callback as a class of their own; grpc.aio calls any callable
        context.add_done_callback(lambda _: self._account(call, code, seconds))  # type: ignore[arg-type]

    def _account(self, call: _Call, code: grpc.StatusCode, seconds: float) -> None:
        self.metrics.inc("grpc_server_handled", grpc_code=code.name, **call.labels)
        self.metrics.observe("grpc_server_handling_seconds", seconds, **call.labels)
        span = call.context.span
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_ERRORS:
                fail(span, code.name)
        end(span)
        log_access(call.context, "grpc", call.context.method, code.name, seconds)

    def _unary(
        self, behavior: Callable[..., Awaitable[Any]], details: grpc.HandlerCallDetails, grpc_type: str
    ) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: aio.ServicerContext) -> Any:
            call, token, error, first = self._begin(details, grpc_type), None, None, None
            try:
                token, first = self._open(call, context)
                return await behavior(request, first)
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._end(call, context, error, token)
                if first is not None:
                    await first.sent()  # before the response or status goes out

        return handler

    def _stream(
        self, behavior: Callable[..., Any], details: grpc.HandlerCallDetails, grpc_type: str
    ) -> Callable[..., Any]:
        if not inspect.isasyncgenfunction(behavior):
            # A coroutine that streams with ``context.write`` (e.g. grpc's own Health.Watch).
            return self._unary(behavior, details, grpc_type)

        async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            call, token, error, first = self._begin(details, grpc_type), None, None, None
            try:
                token, first = self._open(call, context)
                async with contextlib.aclosing(behavior(request, first)) as items:
                    async for item in items:
                        await first.sent()
                        yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                self._end(call, context, error, token)
                if first is not None:
                    await first.sent()

        return handler
