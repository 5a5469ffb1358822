"""The OpenAI-compatible HTTP endpoint, served by the gateway process on its event loop.

Routes: ``POST /v1/chat/completions`` (JSON or SSE streaming ending with ``data: [DONE]``),
``GET /v1/models``, the session routes of ``openai_sessions``, ``GET /healthz`` (200 once the
model is known, 503 before) and ``GET /metrics`` (the gateway's Prometheus registry).

Handlers call the same ``Gateway`` domain object as the gRPC servicer, so media guards, limits,
sessions and error meanings are identical on both listeners; nothing goes through gRPC to
itself. The body is capped at the gRPC listener's message limit. With API keys (the gateway's
``ApiKeys``, or ``auth_token`` as one key), ``/v1/*`` needs ``Authorization: Bearer <token>``
(the OpenAI client's ``api_key``; health and metrics stay open, as gRPC health does); the key
names the tenant every handler passes to the gateway. A client that disconnects cancels its
handler, which cancels the generation. Slow clients (slowloris) are cut: a connection has
``read_timeout_seconds`` to send a request's headers (else it is closed; the same bound closes
an idle keep-alive connection) and as long again for its body (else 408 and close). A body
holds its size in the gateway's in-flight budget (``InflightBytes``: its ``Content-Length``, or
``max_body_bytes`` when it comes chunked) from before it is read until the answer ends; past
the budget the request gets 429. An ``Idempotency-Key`` header is a session turn's request
id (as gRPC's ``request_id``): a retry with it is replayed, another input under it refused (422).
Every request gets a request id (the client's ``X-Request-Id``, else a new one; echoed in the
response), a span, its metrics and an access-log line (``tandem.serving.http_access``); the id is
also the generation's request id (for a session turn: the key that makes a retry idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.convert import request_id_from_pb
from gateway.deadline import Deadline
from gateway.inflight import InflightBytes
from gateway.messages import Chunk, Usage
from gateway.openai_request import ChatCompletionRequest, parse_chat_completion, parse_json
from gateway.openai_response import Completion, ModelNotFound, error_body, error_for, sse
from gateway.openai_sessions import SessionRoutes
from gateway.service import Gateway
from tandem.errors import Unauthenticated
from tandem.metrics import Metrics
from tandem.serving.api_keys import ApiKeys
from tandem.serving.auth import current_tenant, serving_tenant
from tandem.serving.http_access import HttpAccess
from tandem.serving.metrics_endpoint import render
from tandem.serving.request_context import current_request_id, request_id_from
from tandem.serving.tracing import Tracing

log = logging.getLogger(__name__)

SESSION_HEADER = "X-Tandem-Session"
IDEMPOTENCY_HEADER = "Idempotency-Key"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class HttpOptions:
    """Listener settings; ``port`` 0 picks a free port (written to ``port_file`` if set)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 64 * 1024 * 1024
    auth_token: str | None = None
    api_keys: ApiKeys | None = None  # the public keys; None: ``auth_token`` as one key
    tls_cert: str | None = None
    tls_key: str | None = None
    port_file: str | None = None
    shutdown_seconds: float = 10.0
    read_timeout_seconds: float = 30.0  # for a request's headers, then again for its body

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{self.port=} must be in 0..65535")
        if self.read_timeout_seconds <= 0:
            raise ValueError(f"{self.read_timeout_seconds=} must be > 0")
        if self.max_body_bytes < 1024:
            raise ValueError(f"{self.max_body_bytes=} must be >= 1024")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")

    def keys(self) -> ApiKeys:
        return self.api_keys if self.api_keys is not None else ApiKeys.single(self.auth_token)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not (self.tls_cert and self.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


def _error_response(exc: BaseException) -> web.Response:
    status, body = error_for(exc)
    if status == 500:
        log.error("unhandled error in an HTTP request", exc_info=exc)
    return web.json_response(body, status=status)


def _http_error(exc: web.HTTPException) -> web.Response:
    if exc.status == 413:
        message = "the request body is too large"
    else:
        message = f"{exc.reason}: see GET /v1/models and POST /v1/chat/completions"
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    return web.json_response(error_body(message, kind, str(exc.status)), status=exc.status)


def _read_timeout(seconds: float) -> web.Response:
    """408 for a body that did not arrive in time; the connection is closed after it."""
    message = f"the request body did not arrive within {seconds:g} s"
    response = web.json_response(error_body(message, "invalid_request_error", "request_timeout"), status=408)
    response.force_close()
    return response


async def _with_first(first: Chunk, rest: AsyncGenerator[Chunk, None]) -> AsyncGenerator[Chunk, None]:
    yield first
    async for chunk in rest:
        yield chunk


class OpenAIHttpServer:
    """An ``aiohttp.web`` application over a ``Gateway``; ``start()`` binds, ``stop()`` drains."""

    def __init__(
        self,
        gateway: Gateway,
        options: HttpOptions,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        inflight: InflightBytes | None = None,
    ):
        self.gateway = gateway
        self.options = options
        self.inflight = inflight if inflight is not None else InflightBytes(4 * options.max_body_bytes)
        self._keys = options.keys()
        self.metrics = metrics if metrics is not None else Metrics(["http"])
        self.access = HttpAccess(self.metrics, tracing if tracing is not None else Tracing())
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.options.max_body_bytes,
            middlewares=[self.access.middleware, self._errors, self._auth, self._body],
        )
        app.on_response_prepare.append(self.access.echo_request_id)
        app.add_routes(
            [
                web.post("/v1/chat/completions", self.chat_completions),
                web.get("/v1/models", self.models),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.render_metrics),
                *SessionRoutes(self.gateway).routes(),
            ]
        )
        return app

    async def start(self) -> int:
        """Listen; returns the bound port."""
        runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=self.options.read_timeout_seconds,  # also bounds waiting for headers
            lingering_time=min(2.0, self.options.read_timeout_seconds),  # the rest of a refused body
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.options.host,
            self.options.port,
            ssl_context=self.options.ssl_context(),
            shutdown_timeout=self.options.shutdown_seconds,
        )
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        if self.options.port_file:
            Path(self.options.port_file).write_text(str(self.port))
        log.info("OpenAI-compatible HTTP on %s:%d", self.options.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let running requests finish within the shutdown timeout, close."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_error(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return _error_response(exc)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Find the caller's tenant by its key (``/v1/*`` only) and bind it for the handler."""
        keys, tenant = self._keys, current_tenant()
        if keys and request.path.startswith("/v1/"):
            found = keys.tenant_of(request.headers.get("Authorization"))
            if found is None:
                raise Unauthenticated("missing or wrong bearer token in the Authorization header")
            tenant = found
        with serving_tenant(tenant):
            return await handler(request)

    @web.middleware
    async def _body(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Read the body in time, holding its size in the in-flight budget until the answer ends."""
        if not request.body_exists:
            return await handler(request)
        limit = self.options.max_body_bytes
        size = request.content_length if request.content_length is not None else limit
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        async with self.inflight.hold(size):
            try:
                async with asyncio.timeout(self.options.read_timeout_seconds):
                    await request.read()  # kept by aiohttp: the handler's read() returns it
            except TimeoutError:
                return _read_timeout(self.options.read_timeout_seconds)
            return await handler(request)

    def _model_ids(self) -> list[str]:
        model = self.gateway.model_info().model
        return list(dict.fromkeys([model, Path(model).name]))

    async def models(self, request: web.Request) -> web.Response:
        info = self.gateway.model_info()
        data = [{"id": info.model, "object": "model", "created": 0, "owned_by": "tandem"}]
        return web.json_response({"object": "list", "data": data})

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            self.gateway.model_info()
        except Exception:
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ok"})

    async def render_metrics(self, request: web.Request) -> web.Response:
        return await render(self.metrics, request)

    async def _parse(self, request: web.Request) -> ChatCompletionRequest:
        """The validated body; a request naming no model gets the served one."""
        body = await parse_json(await request.read())
        parsed = parse_chat_completion(body, request.headers.get(SESSION_HEADER))
        if not parsed.model:
            return dataclasses.replace(parsed, model=self.gateway.model_info().model)
        if parsed.model not in self._model_ids():
            raise ModelNotFound(f"the model {parsed.model[:200]!r} does not exist; GET /v1/models lists it")
        return parsed

    def _generation(self, parsed: ChatCompletionRequest, request_id: str) -> AsyncGenerator[Chunk, None]:
        deadline, tenant = Deadline.after(None), current_tenant()
        if parsed.session_id:
            return self.gateway.chat(
                parsed.session_id, parsed.turn(), parsed.sampling, request_id, deadline, tenant
            )
        return self.gateway.generate(parsed.messages, parsed.sampling, request_id, deadline, tenant)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        parsed = await self._parse(request)
        key = request_id_from_pb(request.headers.get(IDEMPOTENCY_HEADER, ""))
        request_id = key or current_request_id() or request_id_from(None)
        completion = Completion(parsed.model, parsed.session_id)
        async with contextlib.aclosing(self._generation(parsed, request_id)) as chunks:
            first = await anext(chunks)  # failures before any output get a proper HTTP status
            if parsed.stream:
                return await self._stream(request, completion, _with_first(first, chunks), parsed)
            return await self._complete(completion, _with_first(first, chunks))

    async def _complete(self, completion: Completion, chunks: AsyncGenerator[Chunk, None]) -> web.Response:
        text: list[str] = []
        last = Chunk()
        async for chunk in chunks:
            text.append(chunk.text)
            last = chunk
        return web.json_response(completion.full("".join(text), last.finish_reason, last.usage))

    async def _stream(
        self,
        request: web.Request,
        completion: Completion,
        chunks: AsyncGenerator[Chunk, None],
        parsed: ChatCompletionRequest,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(sse(completion.chunk({"role": "assistant", "content": ""})))
        try:
            usage = await self._write_chunks(response, completion, chunks)
            if parsed.include_usage:
                await response.write(sse(completion.usage_chunk(usage)))
            await response.write(sse("[DONE]"))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:
            status, body = error_for(exc)
            log.info("HTTP stream ended with %d: %s", status, body["error"]["message"])
            self.metrics.inc("http_stream_errors", status=status)
            await response.write(sse(body))
        await response.write_eof()
        return response

    async def _write_chunks(
        self, response: web.StreamResponse, completion: Completion, chunks: AsyncGenerator[Chunk, None]
    ) -> Usage | None:
        usage: Usage | None = None
        async for chunk in chunks:
            if chunk.text:
                await response.write(sse(completion.chunk({"content": chunk.text})))
            if chunk.is_final:
                await response.write(sse(completion.chunk({}, chunk.finish_reason)))
                usage = chunk.usage
        return usage


def options_from_config(config: Any, api_keys: ApiKeys | None = None) -> HttpOptions:
    """HTTP listener settings from a ``GatewayConfig``: same host, limits, keys and TLS as gRPC."""
    return HttpOptions(
        host=config.host,
        port=config.http_port,
        max_body_bytes=config.max_message_bytes,
        auth_token=config.auth_token,
        api_keys=api_keys,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        port_file=config.http_port_file,
        shutdown_seconds=config.grace_seconds,
        read_timeout_seconds=config.http_read_timeout_seconds,
    )
