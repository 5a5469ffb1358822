"""One language worker process: the gRPC server, the model, the engine and their lifecycle.

``LanguageApp`` runs ``ServiceApp``'s lifecycle, the same in every service: the server starts
first (health NOT_SERVING; calls get UNAVAILABLE), ``warmup`` loads the language half in a helper
thread, starts and warms the engine, and only then the server reports SERVING. On SIGTERM (or
``stop``) the server drains (NOT_SERVING, running streams get the grace period), then
``shutdown`` stops the engine and closes Redis. Should the engine die (its thread crashes, or
vLLM's engine core exits), the app fails: health NOT_SERVING at once, drain, exit code 1.
"""

from __future__ import annotations

import asyncio
import logging

from grpc import aio
from vlm.v1 import llm_pb2, llm_pb2_grpc

from llm_service.config import LlmConfig
from llm_service.engine import Engine, EngineConfig
from llm_service.engine.types import TokenEngine
from llm_service.features import FeatureSource
from llm_service.loader import LoadedModel, load
from llm_service.prompt import PromptBuilder
from llm_service.servicer import LanguageServicer
from llm_service.worker import LanguageWorker, ModelInfo
from tandem.embeddings.cache import CacheSettings, EmbeddingCache
from tandem.embeddings.kv import KeyValueStore, RedisStore, connect_redis
from tandem.errors import Unavailable
from tandem.metrics import Metrics
from tandem.models.model_name import served_model_name
from tandem.serving.app import ServiceApp
from tandem.serving.bootstrap import GrpcServer
from tandem.serving.tracing import Tracing

log = logging.getLogger(__name__)

SERVICE_NAME = llm_pb2.DESCRIPTOR.services_by_name["LanguageService"].full_name
ENGINE_WATCH_SECONDS = 0.5  # how often the app asks its engine whether it died


def context_length(config: LlmConfig, loaded: LoadedModel) -> int:
    length = config.context_length or loaded.max_positions
    if length < 2:
        raise ValueError("the model config has no max_position_embeddings: set --context-length")
    return length


def build_worker(
    config: LlmConfig, loaded: LoadedModel, store: KeyValueStore | None, metrics: Metrics
) -> LanguageWorker:
    """Wire a loaded model into a worker (the engine is created, not started)."""
    model, adapter = loaded.model, loaded.adapter
    info = ModelInfo(
        served_model_name(config.model, config.served_model_name or None),
        loaded.architecture,
        adapter.is_vlm,
        loaded.fingerprint,
        context_length(config, loaded),
    )
    engine_config = EngineConfig(
        context_length=info.context_length,
        max_batch_size=config.max_batch_size,
        max_queue=config.max_queue,
        max_prefill_tokens=config.max_prefill_tokens,
        prefix_cache_bytes=config.kv_reuse_bytes,
        max_running_per_tenant=config.max_running_per_tenant,
    )
    if config.session_cache_entries is not None:
        log.warning("--session-cache-entries is deprecated: use --prefix-cache-bytes (0 disables KV reuse)")
    engine = Engine(model, loaded.tokenizer, engine_config, loaded.eos_token_ids, metrics)
    cache = None
    if store is not None:
        settings = CacheSettings(prefix=config.cache_prefix)
        cache = EmbeddingCache(
            store, loaded.fingerprint, model.hidden_size, settings, metrics, adapter.extras
        )
    features = FeatureSource(loaded.fingerprint, model.hidden_size, cache, adapter.extras, metrics)
    expand = adapter.expander(loaded.tokenizer)
    prompts = PromptBuilder(loaded.tokenizer, loaded.chat_template, adapter.add_special_tokens, expand)
    return LanguageWorker(model, adapter, prompts, features, engine, info)


class LanguageApp(ServiceApp):
    """The process: see the module docstring for the lifecycle."""

    def __init__(self, config: LlmConfig, metrics: Metrics | None = None, tracing: Tracing | None = None):
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics.for_service("llm")
        self.worker: LanguageWorker | None = None
        self._store: RedisStore | None = None
        self._watch: asyncio.Task[None] | None = None
        servicer = LanguageServicer(self.current, config.max_new_tokens_default)

        def register(server: aio.Server) -> None:
            llm_pb2_grpc.add_LanguageServiceServicer_to_server(servicer, server)

        self.server = GrpcServer(
            config, [register], [SERVICE_NAME], self.metrics, tracing, config.worker_keys()
        )

    def current(self) -> LanguageWorker:
        if self.worker is None:
            raise Unavailable("the language model is still loading; retry shortly")
        return self.worker

    async def warmup(self) -> None:
        """Load the weights, start and warm the engine; afterwards ``current()`` serves."""
        if self.config.redis_url:
            store = self._store = RedisStore(
                connect_redis(self.config.redis_url, self.config.redis_timeout_seconds)
            )
            self.metrics.watch("redis_breaker_open", lambda: float(store.breaker.is_open), role="cache")
        if self.config.engine == "vllm":  # vLLM loads the weights itself when its engine starts
            from llm_service.vllm_engine.loader import build_vllm_worker

            worker = await asyncio.to_thread(build_vllm_worker, self.config, self._store, self.metrics)
            await asyncio.to_thread(worker.engine.start)
        else:
            loaded = await asyncio.to_thread(load, self.config)
            worker = build_worker(self.config, loaded, self._store, self.metrics)
            worker.engine.start()
        await worker.warmup()
        self.worker = worker
        self._watch = asyncio.create_task(self._watch_engine(worker.engine))
        log.info(
            "ready: %s (%s), context %d",
            self.config.model,
            worker.info.architecture,
            worker.info.context_length,
        )

    async def _watch_engine(self, engine: TokenEngine) -> None:
        """Poll ``engine`` for a failure (its thread or vLLM's core died): then ``fail`` (health
        NOT_SERVING, drain, exit 1), as a worker that can only answer UNAVAILABLE must go."""
        while (reason := engine.failure()) is None:
            await asyncio.sleep(ENGINE_WATCH_SECONDS)
        await self.fail(reason)

    async def shutdown(self) -> None:
        """Stop the engine (waiting requests get UNAVAILABLE) and close Redis."""
        if self._watch is not None:
            self._watch.cancel()
        if self.worker is not None:
            await asyncio.to_thread(self.worker.engine.stop)
        if self._store is not None:
            await self._store.close()
