"""The HTTP twin of ``RequestInterceptor``: request id, server span, metrics and access log.

``HttpAccess.middleware`` goes first in an aiohttp application's middlewares, so it sees the
status every other middleware settled on. Per request: the id is the client's ``X-Request-Id``
(if sane) or a new one, bound to the handler's task for log lines, handlers and downstream
calls (``tandem.serving.request_context``); a server span starts,
child of the client's W3C ``traceparent``; at the end ``tandem_http_requests_total{method, route,
status}`` and ``tandem_http_request_duration_seconds`` (``route`` is the route's template, e.g.
``/v1/sessions/{session_id}``, so ids do not multiply series) and one access-log line.
The response carries ``X-Request-Id``: set by the middleware on a returned response, and by
``echo_request_id`` (an ``on_response_prepare`` hook) on one the handler streams itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from tandem.metrics import Metrics
from tandem.serving.access_log import is_quiet, log_access
from tandem.serving.request_context import RequestContext, bind, current, request_id_from, unbind
from tandem.serving.tracing import Tracing, end, fail

REQUEST_ID_HEADER = "X-Request-Id"
CLIENT_CLOSED = 499  # the client went away before the answer (nginx's convention)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    """The template of the route that matched ``request`` ("unmatched" for none)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class HttpAccess:
    """Middleware and response hook for one service's HTTP listener; see the module docstring."""

    def __init__(self, metrics: Metrics, tracing: Tracing):
        self.metrics = metrics
        self.tracing = tracing

    def _begin(self, request: web.Request, route: str) -> RequestContext:
        method = f"{request.method} {route}"
        context = RequestContext(
            request_id_from(request.headers.get(REQUEST_ID_HEADER)), method, self.tracing
        )
        if not is_quiet("http", request.path):
            carrier = {k.lower(): v for k, v in request.headers.items()}
            attributes = {"http.request.method": request.method, "http.route": route}
            context.span = self.tracing.start(method, "server", carrier=carrier, attributes=attributes)
        return context

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_of(request)
        context = self._begin(request, route)
        token, status = bind(context), 500
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = context.request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            self._end(request, context, route, status)
            with contextlib.suppress(ValueError):
                unbind(token)

    def _end(self, request: web.Request, context: RequestContext, route: str, status: int) -> None:
        seconds = time.monotonic() - context.started
        self.metrics.inc("http_requests", method=request.method, route=route, status=status)
        self.metrics.observe("http_request_duration_seconds", seconds, method=request.method, route=route)
        if context.span is not None:
            context.span.set_attribute("http.response.status_code", status)
            if status >= 500:
                fail(context.span, str(status))
        end(context.span)
        log_access(context, "http", request.path, str(status), seconds)

    async def echo_request_id(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: the request's id on a response its handler prepares."""
        context = current()
        if context is not None:
            response.headers[REQUEST_ID_HEADER] = context.request_id
