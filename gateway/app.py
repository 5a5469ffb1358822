"""Wiring: a ``GatewayConfig`` becomes a ``GrpcServer`` serving ``GatewayService``.

Lifecycle (``ServiceApp``'s, the same in every service): ``server.start()`` listens with health
NOT_SERVING; ``warmup()`` starts the optional OpenAI-compatible HTTP listener and asks the
language service for the model (and, for a VLM, checks that a vision service answers with the
same fingerprint), retrying until they answer, and refuses a state Redis that evicts; the
server then reports SERVING. From then on the ``DependencyMonitor`` keeps health NOT_SERVING
while no language replica answers or the state Redis is unreachable (``gateway.dependencies``).
Sessions live in the state Redis (``config.state_url``), the cache's image bytes in the cache
Redis (``config.redis_url``); a session's images are kept in the state role too
(``gateway.session_images``). ``shutdown()`` stops the monitor and the HTTP listener and closes
the clients after the server has drained.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from grpc import aio
from vlm.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.config import GatewayConfig
from gateway.dependencies import DependencyMonitor, EvictingStateStore, Probe, StateRedisProbe
from gateway.discovery import Resolve, system_resolve
from gateway.downstream import Downstream
from gateway.fetch import Dial, FetchPolicy, Lookup, UrlFetcher, system_lookup
from gateway.inflight import InflightBytes
from gateway.media_guard import MediaGuard, MediaLimits
from gateway.messages import ModelInfo
from gateway.openai_http import OpenAIHttpServer, options_from_config
from gateway.pipeline import Pipeline
from gateway.service import Gateway
from gateway.servicer import GatewayServicer
from gateway.session_images import RedisSessionImages, SessionImages
from gateway.session_redis import RedisSessionStore
from gateway.sessions import Sessions, SessionSettings, SessionStore
from tandem.embeddings.kv import connect_redis
from tandem.errors import Unavailable
from tandem.metrics import Metrics
from tandem.serving.app import ServiceApp
from tandem.serving.bootstrap import GrpcServer
from tandem.serving.tracing import Tracing

log = logging.getLogger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
_INFO_TIMEOUT_SECONDS = 5.0
_RETRY_SECONDS = 0.5


class StartupError(RuntimeError):
    """The deployment cannot serve as configured (e.g. a VLM without a vision service)."""


def fetch_policy(config: GatewayConfig) -> FetchPolicy:
    return FetchPolicy(
        timeout_seconds=config.url_fetch_timeout_seconds,
        connect_timeout_seconds=min(5.0, config.url_fetch_timeout_seconds),
        max_redirects=config.url_max_redirects,
        allowed_domains=tuple(d.lower().strip(".") for d in config.url_allowed_domains),
        allow_private=config.allow_private_urls,
    )


class GatewayApp(ServiceApp):
    """The gateway's parts, built from one config; ``store``/``lookup``/``dial``/``resolve`` are
    test seams, ``metrics``/``tracing`` the service's (default: its registry, no tracing)."""

    def __init__(
        self,
        config: GatewayConfig,
        store: SessionStore | None = None,
        lookup: Lookup = system_lookup,
        dial: Dial | None = None,
        resolve: Resolve = system_resolve,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ):
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics.for_service("gateway")
        self.api_keys = config.api_keys()
        self.downstream = Downstream(
            config.vision_addresses,
            config.llm_addresses,
            config.max_message_bytes,
            config.downstream_token(),
            Path(config.downstream_tls_ca).read_bytes() if config.downstream_tls_ca else None,
            config.max_images_per_encode,
            resolve,
            config.llm_resolve_seconds,
            drain_seconds=config.max_request_seconds or 600.0,
        )
        self.metrics.watch("llm_replicas", lambda: len(self.downstream.language.nodes))
        self.fetcher = UrlFetcher(fetch_policy(config), lookup, dial)
        limits = MediaLimits(config.max_images_per_request, config.max_image_bytes, config.max_request_bytes)
        self.pipeline = Pipeline(
            MediaGuard(limits, self.fetcher, self.metrics),
            self.downstream,
            tenant_scoped=config.cache_scope == "tenant",
        )
        settings = SessionSettings(
            default_ttl_seconds=config.session_ttl_seconds,
            max_ttl_seconds=config.max_session_ttl_seconds,
            lock_seconds=config.turn_lock_seconds,
            max_system_prompt_bytes=config.max_system_prompt_bytes,
            max_sessions_per_tenant=config.max_sessions_per_tenant,
            max_stored_bytes_per_tenant=config.max_stored_bytes_per_tenant,
        )
        self.store, images, self.state_probe = _state(config, store)
        self.gateway = Gateway(
            self.pipeline, Sessions(self.store, settings), config.max_request_seconds, self.metrics, images
        )
        self.inflight = InflightBytes(config.max_inflight_bytes)
        servicer = GatewayServicer(self.gateway, self.inflight)

        def register(server: aio.Server) -> None:
            gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)

        self.server = GrpcServer(config, [register], [SERVICE_NAME], self.metrics, tracing, self.api_keys)
        self.http = (
            OpenAIHttpServer(
                self.gateway,
                options_from_config(config, self.api_keys),
                self.metrics,
                self.server.tracing,
                self.inflight,
            )
            if config.http_port >= 0
            else None
        )

        probes: dict[str, Probe] = {"language service": self._language_probe}
        if self.state_probe is not None:
            probes["state Redis"] = self.state_probe
        self.monitor = DependencyMonitor(self.server.readiness, probes, config.health_check_seconds)

    async def warmup(self) -> None:
        """Refuse an evicting state Redis, start the HTTP listener (if any), discover the served
        model, then watch the dependencies."""
        if self.state_probe is not None:
            try:
                await self.state_probe.check_at_start()
            except EvictingStateStore as exc:
                raise StartupError(str(exc)) from None
        if self.http is not None:
            await self.http.start()
        await self.downstream.start()
        await self._wait_for_downstream()
        await self.monitor.check_once()
        self.monitor.start()

    async def _language_probe(self) -> None:
        await self.downstream.language_info(self.monitor.timeout)

    async def _wait_for_downstream(self) -> None:
        """Discover the served model, retrying until the downstream services answer."""
        started = time.monotonic()
        limit = self.config.startup_timeout_seconds
        while True:
            try:
                self.pipeline.model = await self._discover()
            except Unavailable as exc:
                if limit and time.monotonic() - started > limit:
                    raise StartupError(
                        f"downstream services did not answer within {limit:g} s: {exc}"
                    ) from None
                log.info("waiting for downstream services: %s", exc)
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            model = self.pipeline.model
            log.info(
                "serving %s (%s, %s)", model.model, model.architecture, "VLM" if model.is_vlm else "text-only"
            )
            return

    async def _discover(self) -> ModelInfo:
        info = await self.downstream.language_info(_INFO_TIMEOUT_SECONDS)
        if not info.is_vlm:
            if self.downstream.vision is not None:
                log.info("text-only model: the vision addresses are not used")
                self.downstream.vision = None
            return info
        if self.downstream.vision is None:
            raise StartupError("the model is a VLM: give --vision-addresses (a vision service is needed)")
        vision = await self.downstream.vision_info(_INFO_TIMEOUT_SECONDS)
        if vision.fingerprint != info.fingerprint:
            raise StartupError(
                "the vision and language services serve different models or settings (fingerprints "
                f"{vision.fingerprint[:12]} and {info.fingerprint[:12]}); start both with the same --model"
            )
        return info

    async def shutdown(self) -> None:
        """Stop the HTTP listener; close the downstream channels, the URL fetcher and the store."""
        await self.monitor.stop()
        if self.http is not None:
            await self.http.stop()
        await self.gateway.sessions.release_all()
        await self.downstream.close()
        await self.fetcher.close()
        await self.store.close()
        if isinstance(self.gateway.images, RedisSessionImages) and self.gateway.images.cache is not None:
            await self.gateway.images.cache.aclose()


def _state(
    config: GatewayConfig, store: SessionStore | None
) -> tuple[SessionStore, SessionImages | None, StateRedisProbe | None]:
    """The session store, session images and state probe: on the state Redis, or ``store``
    (a test seam: then no session images and no probe)."""
    if store is not None:
        return store, None, None
    redis_store = RedisSessionStore.connect(
        config.state_url, config.cache_prefix, config.redis_timeout_seconds
    )
    cache = connect_redis(config.redis_url, config.redis_timeout_seconds) if config.redis_url else None
    images = RedisSessionImages(redis_store.client, cache, config.cache_prefix)
    return redis_store, images, StateRedisProbe(redis_store.client)
