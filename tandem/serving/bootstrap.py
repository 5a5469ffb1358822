"""The server bootstrap every Tandem service runs on.

Lifecycle of a ``GrpcServer`` (its ``Readiness`` gate decides what ``grpc.health.v1`` reports):

1. ``start()`` binds the port (0 picks a free one), registers the services, the standard
   health service (NOT_SERVING) and reflection, and starts serving; with ``metrics_port`` set,
   ``GET /metrics`` is served there too.
2. ``set_serving()`` is called by the service once its weights are loaded and warmed up.
3. ``drain()`` (on SIGTERM/SIGINT in ``run_until_signal``) flips health to NOT_SERVING for good,
   stops accepting new calls, lets running streams finish within the grace period and then
   cancels them; the metrics endpoint closes last.

Interceptors, outermost first: ``RequestInterceptor`` (request id, span, metrics, access log),
``AuthInterceptor`` (with ``api_keys``: a worker's internal key, the gateway's public keys; by
default ``auth_token``), ``ErrorInterceptor`` (domain errors to statuses).

Message-size limits are raised on every server (an image embedding exceeds gRPC's 4 MiB
default); ``ServerConfig.max_message_bytes`` bounds them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tandem.metrics import Metrics
from tandem.serving.api_keys import ApiKeys
from tandem.serving.auth import AuthInterceptor
from tandem.serving.config import ServerConfig
from tandem.serving.interceptor import ErrorInterceptor
from tandem.serving.metrics_endpoint import MetricsEndpoint
from tandem.serving.parent import follow_parent
from tandem.serving.priority import run_at_nice
from tandem.serving.readiness import Readiness
from tandem.serving.request_interceptor import RequestInterceptor
from tandem.serving.tracing import Tracing

log = logging.getLogger(__name__)

Register = Callable[[aio.Server], None]


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options for servers and clients that carry embeddings."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


class GrpcServer:
    """A ``grpc.aio`` server with health, reflection, error mapping, request metrics, access
    log, tracing and graceful drain; ``metrics``/``tracing`` are the service's (default: a bare
    registry, no tracing), ``api_keys`` the keys a call must carry (default: ``auth_token``, if
    set, as one key)."""

    def __init__(
        self,
        config: ServerConfig,
        registrations: Sequence[Register],
        service_names: Sequence[str],
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        api_keys: ApiKeys | None = None,
    ):
        self.config = config
        self.api_keys = api_keys if api_keys is not None else ApiKeys.single(config.auth_token)
        self._registrations = list(registrations)
        self._service_names = list(service_names)
        self.readiness = Readiness(service_names)
        self.metrics = metrics if metrics is not None else Metrics(["grpc"])
        self.tracing = tracing if tracing is not None else Tracing()
        self._server: aio.Server | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.port: int = 0

    async def start(self) -> int:
        """Bind, register and start serving with health NOT_SERVING; returns the bound port."""
        interceptors: list[aio.ServerInterceptor] = [ErrorInterceptor()]
        if self.api_keys:
            interceptors.insert(0, AuthInterceptor(self.api_keys))
        interceptors.insert(0, RequestInterceptor(self.metrics, self.tracing))
        server = aio.server(interceptors=interceptors, options=channel_options(self.config.max_message_bytes))
        for register in self._registrations:
            register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.readiness.servicer, server)
        if self.config.reflection:
            names = [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
            reflection.enable_server_reflection(names, server)
        self.port = self._bind(server)
        await self.readiness.hold()
        await server.start()
        self._server = server
        if self.config.port_file:
            Path(self.config.port_file).write_text(str(self.port))
        log.info("listening on %s:%d", self.config.host, self.port)
        if self.config.metrics_port and self._metrics_endpoint is None:
            self._metrics_endpoint = MetricsEndpoint(self.metrics, self.config.host, self.config.metrics_port)
            await self._metrics_endpoint.start()
        return self.port

    def _bind(self, server: aio.Server) -> int:
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert and self.config.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(Path(self.config.tls_key).read_bytes(), Path(self.config.tls_cert).read_bytes())]
            )
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)

    async def set_serving(self) -> None:
        """Report SERVING: call once weights are loaded and warmed up."""
        await self.readiness.open()

    async def drain(self) -> None:
        """NOT_SERVING for good, refuse new calls, finish running ones within the grace period."""
        if self._server is None:
            return
        await self.readiness.close()
        await self._server.stop(self.config.grace_seconds)
        self._server = None
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.stop()
            self._metrics_endpoint = None

    async def wait(self) -> None:
        """Block until the server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()


async def run_until_signal(
    server: GrpcServer,
    warmup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start ``server``, warm up, report SERVING, and drain on SIGTERM or SIGINT (or when
    ``stop`` is set: the service found it cannot go on)."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    follow_parent()
    run_at_nice(server.config.nice)
    await server.start()
    warm = asyncio.ensure_future(warmup())
    stopped = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({warm, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if warm in done:
        if warm.cancelled() or warm.exception() is not None:
            stopped.cancel()  # nothing will await it: warm-up failed
        warm.result()
        await server.set_serving()
        await stopped
    else:
        warm.cancel()
    log.info("stopping: draining for up to %.1fs", server.config.grace_seconds)
    await server.drain()
    if shutdown is not None:
        await shutdown()
    log.info("stopped")
