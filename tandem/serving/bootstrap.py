"""The server bootstrap every Tandem service runs on.

Lifecycle of a ``GrpcServer``:

1. ``start()`` binds the port (0 picks a free one), registers the services, the standard
   ``grpc.health.v1`` health service (NOT_SERVING) and reflection, and starts serving.
2. ``set_serving()`` is called by the service once its weights are loaded and warmed up.
3. ``drain()`` (on SIGTERM/SIGINT in ``run_until_signal``) flips health to NOT_SERVING, stops
   accepting new calls, lets running streams finish within the grace period and then cancels
   them.

Message-size limits are raised on every server (an image embedding exceeds gRPC's 4 MiB
default); ``ServerOptions.max_message_bytes`` bounds them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tandem.serving.auth import AuthInterceptor
from tandem.serving.interceptor import ErrorInterceptor
from tandem.serving.parent import follow_parent

log = logging.getLogger(__name__)

Register = Callable[[aio.Server], None]


@dataclass(frozen=True)
class ServerOptions:
    """Transport settings shared by all services."""

    host: str = "127.0.0.1"
    port: int = 0
    max_message_bytes: int = 64 * 1024 * 1024
    grace_seconds: float = 10.0
    reflection: bool = True
    auth_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    port_file: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{self.port=} must be in 0..65535")
        if self.max_message_bytes < 4 * 1024 * 1024:
            raise ValueError(f"{self.max_message_bytes=} must be >= 4 MiB")
        if self.grace_seconds < 0:
            raise ValueError(f"{self.grace_seconds=} must be >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")

    @classmethod
    def from_config(cls, config: Any) -> ServerOptions:
        """Pick the transport fields out of a service config dataclass."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in dataclasses.asdict(config).items() if k in names}
        return cls(**values)


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options for servers and clients that carry embeddings."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


class GrpcServer:
    """A ``grpc.aio`` server with health, reflection, error mapping and graceful drain."""

    def __init__(
        self, options: ServerOptions, registrations: Sequence[Register], service_names: Sequence[str]
    ):
        self.options = options
        self._registrations = list(registrations)
        self._service_names = list(service_names)
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lacks .aio
        self._server: aio.Server | None = None
        self.port: int = 0

    async def start(self) -> int:
        """Bind, register and start serving with health NOT_SERVING; returns the bound port."""
        interceptors: list[aio.ServerInterceptor] = [ErrorInterceptor()]
        if self.options.auth_token:
            interceptors.insert(0, AuthInterceptor(self.options.auth_token))
        server = aio.server(
            interceptors=interceptors, options=channel_options(self.options.max_message_bytes)
        )
        for register in self._registrations:
            register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if self.options.reflection:
            names = [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
            reflection.enable_server_reflection(names, server)
        self.port = self._bind(server)
        await self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self._server = server
        if self.options.port_file:
            Path(self.options.port_file).write_text(str(self.port))
        log.info("listening on %s:%d", self.options.host, self.port)
        return self.port

    def _bind(self, server: aio.Server) -> int:
        address = f"{self.options.host}:{self.options.port}"
        if self.options.tls_cert and self.options.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(Path(self.options.tls_key).read_bytes(), Path(self.options.tls_cert).read_bytes())]
            )
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)

    async def _set_status(self, status: int) -> None:
        for name in ["", *self._service_names]:
            await self._health.set(name, status)

    async def set_serving(self) -> None:
        """Report SERVING: call once weights are loaded and warmed up."""
        await self._set_status(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s", ", ".join(self._service_names))

    async def drain(self) -> None:
        """NOT_SERVING at once, refuse new calls, finish running ones within the grace period."""
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self.options.grace_seconds)
        self._server = None

    async def wait(self) -> None:
        """Block until the server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()


async def run_until_signal(
    server: GrpcServer,
    warmup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start ``server``, warm up, report SERVING, and drain on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    follow_parent()
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
    log.info("signal received: draining for up to %.1fs", server.options.grace_seconds)
    await server.drain()
    if shutdown is not None:
        await shutdown()
    log.info("stopped")


def configure_logging(level: str = "INFO") -> None:
    """One log format for every service: time, level, logger, message."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
