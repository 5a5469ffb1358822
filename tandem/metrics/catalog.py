"""Every metric Tandem exports: name, type, labels and meaning, in one table.

A metric's key is its exported name without the ``tandem_`` prefix (and, for a counter, without
the ``_total`` suffix that the Prometheus client adds): code calls ``metrics.inc("prompt_tokens")``
and Prometheus scrapes ``tandem_prompt_tokens_total``. The names of the request figures follow
vLLM's (``time_to_first_token_seconds``, ``num_requests_running``, ...), so dashboards and
autoscalers written for vLLM read Tandem with the prefix changed.

Metrics come in groups; each service registers the groups it serves (``SERVICE_GROUPS``), so
its ``/metrics`` lists them from start-up, at zero. The grafana dashboard in ``deploy/grafana``
and the README's "Observability" section use these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "tandem"
Kind = Literal["counter", "gauge", "histogram"]
Group = Literal["grpc", "http", "gateway", "sessions", "engine", "cache", "vision"]

GRPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")
# Seconds. Request latencies span a cache hit on a small model (milliseconds) to a long
# generation on a CPU (minutes); token and step latencies are shorter.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3.0, 6.0, 12.0, 25.0, 50.0, 100.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The stages of a request before its first token (fetch, hash, preprocess, cache, queue): some
# take tens of microseconds (hashing a small image), a fetch over the network seconds.
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric; ``name`` is what Prometheus scrapes (counters get ``_total``)."""

    key: str
    kind: Kind
    group: Group
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if (self.kind == "histogram") != bool(self.buckets):
            raise ValueError(f"{self.key}: buckets are for histograms, and every histogram needs them")

    @property
    def name(self) -> str:
        return f"{PREFIX}_{self.key}"

    @property
    def exported(self) -> str:
        """The name of the sample a scrape shows (a histogram's are ``_bucket/_count/_sum``)."""
        return f"{self.name}_total" if self.kind == "counter" else self.name


def _counter(key: str, group: Group, help: str, *labels: str) -> MetricSpec:
    return MetricSpec(key, "counter", group, help, labels)


def _gauge(key: str, group: Group, help: str, *labels: str) -> MetricSpec:
    return MetricSpec(key, "gauge", group, help, labels)


def _histogram(key: str, group: Group, help: str, buckets: tuple[float, ...], *labels: str) -> MetricSpec:
    return MetricSpec(key, "histogram", group, help, labels, buckets)


CATALOG: tuple[MetricSpec, ...] = (
    # -- every service: its gRPC server (named as go-grpc-prometheus names them)
    _counter("grpc_server_started", "grpc", "RPCs started on the server.", *GRPC_LABELS),
    _counter(
        "grpc_server_handled",
        "grpc",
        "RPCs completed on the server, by status code.",
        *GRPC_LABELS,
        "grpc_code",
    ),
    _histogram(
        "grpc_server_handling_seconds",
        "grpc",
        "Time from an RPC's start to its status.",
        REQUEST_BUCKETS,
        *GRPC_LABELS,
    ),
    # -- gateway: the OpenAI-compatible HTTP listener
    _counter(
        "http_requests", "http", "HTTP requests answered, by route and status.", "method", "route", "status"
    ),
    _histogram(
        "http_request_duration_seconds",
        "http",
        "Time to answer an HTTP request (a stream: until its end).",
        REQUEST_BUCKETS,
        "method",
        "route",
    ),
    _counter(
        "http_stream_errors",
        "http",
        "Streamed answers that ended with an error event (after status 200).",
        "status",
    ),
    # -- gateway: generations, as a client sees them (gRPC and HTTP alike)
    _histogram(
        "time_to_first_token_seconds",
        "gateway",
        "Time from a generation request to its first token.",
        FIRST_TOKEN_BUCKETS,
    ),
    _histogram(
        "e2e_request_latency_seconds",
        "gateway",
        "Time from a generation request to its last token.",
        REQUEST_BUCKETS,
    ),
    _histogram(
        "image_fetch_seconds",
        "gateway",
        "Time to turn one image a client sent into bytes: an http(s) fetch, a data: URI decode, or "
        "nothing for raw bytes (an image sent by id is not counted).",
        STAGE_BUCKETS,
    ),
    _gauge(
        "llm_replicas",
        "gateway",
        "Language replicas the gateway routes over (each address a dns:/// name resolved to counts).",
    ),
    # -- gateway: sessions
    _counter("sessions_created", "sessions", "Sessions created."),
    _counter("sessions_deleted", "sessions", "Sessions deleted by a client."),
    _counter(
        "session_commits",
        "sessions",
        "Session turns that reached their commit, by outcome: committed, conflict (the session changed "
        "meanwhile), gone (deleted or expired meanwhile) or failed (the store was unreachable).",
        "outcome",
    ),
    _counter("session_replays", "sessions", "Retried turns answered from their committed answer."),
    # -- language worker: the engine (named as vLLM names them)
    _gauge("num_requests_running", "engine", "Requests in the decode batch (or being prefilled)."),
    _gauge("num_requests_waiting", "engine", "Requests queued for a batch slot."),
    _counter("prompt_tokens", "engine", "Prompt tokens of the requests prefilled (image tokens included)."),
    _counter("generation_tokens", "engine", "Tokens generated."),
    _counter("cached_prompt_tokens", "engine", "Prompt tokens whose KV was reused from the prefix cache."),
    _gauge("prefix_cache_bytes", "engine", "Bytes of KV held by the engine's prefix cache."),
    _counter(
        "request_success", "engine", "Requests that finished generating, by finish reason.", "finished_reason"
    ),
    _histogram(
        "time_per_output_token_seconds", "engine", "Time between two tokens of a request.", TOKEN_BUCKETS
    ),
    _counter("engine_cancelled", "engine", "Requests cancelled (caller gone or deadline) before their end."),
    _counter("engine_overloaded", "engine", "Requests refused because the queue was full."),
    _counter("engine_prefills", "engine", "Prompts whose prefill completed."),
    _counter("engine_prefill_tokens", "engine", "Prompt positions run through the model (chunks included)."),
    _histogram("engine_prefill_seconds", "engine", "Duration of one prefill forward.", STEP_BUCKETS),
    _histogram("engine_decode_seconds", "engine", "Duration of one batched decode step.", STEP_BUCKETS),
    _histogram(
        "engine_queue_seconds",
        "engine",
        "Time from a request's submission to the engine to the start of its prefill.",
        STAGE_BUCKETS,
    ),
    _histogram(
        "embedding_fetch_seconds",
        "engine",
        "Time to read and validate the image embeddings of one request (from Redis, or its inline "
        "records); requests without images are not counted.",
        STAGE_BUCKETS,
    ),
    # -- vision and language workers: the shared embedding cache in Redis
    _counter("vision_cache_hits", "cache", "Embedding lookups answered from the cache."),
    _counter("vision_cache_misses", "cache", "Embedding lookups that found nothing."),
    _counter(
        "vision_cache_bad_values",
        "cache",
        "Cached values that failed validation (deleted, counted as misses).",
    ),
    _counter(
        "redis_errors",
        "cache",
        "Redis operations that failed, timed out or were skipped by the open breaker (the caller "
        "computed or handed over inline instead).",
        "role",
    ),
    _gauge("redis_breaker_open", "cache", "1 while the Redis circuit breaker is open, else 0.", "role"),
    # -- vision worker: the encoder
    _histogram(
        "vision_hash_seconds",
        "vision",
        "Time to check the format of one image's bytes and hash them into its image id.",
        STAGE_BUCKETS,
    ),
    _histogram(
        "vision_preprocess_seconds",
        "vision",
        "Time to decode and preprocess one image (the model's processor), in the preprocessing pool.",
        STAGE_BUCKETS,
    ),
    _histogram(
        "vision_cache_seconds",
        "vision",
        "Time one Encode call spent on the embedding cache in Redis: header lookups and lease claims "
        "before encoding, writes and lease releases after (a call that only joined another's "
        "encoding, or a service without a cache, is not counted).",
        STAGE_BUCKETS,
    ),
    _histogram("vision_encode_seconds", "vision", "Duration of one encoder forward (a batch).", STEP_BUCKETS),
    _counter("vision_images_encoded", "vision", "Images run through the vision encoder."),
    _counter("vision_encoder_batches", "vision", "Encoder forwards (batches of images)."),
    _counter("vision_images_dropped", "vision", "Queued images dropped unencoded: their callers left."),
    _counter("vision_images_refused", "vision", "Images refused because too many were pending."),
    _counter("vision_requests_rejected", "vision", "Encode calls refused as invalid."),
    _counter("vision_requests_timed_out", "vision", "Encode calls that ran past their deadline."),
)

SPECS: dict[str, MetricSpec] = {spec.key: spec for spec in CATALOG}
SERVICE_GROUPS: dict[str, tuple[Group, ...]] = {
    "gateway": ("grpc", "http", "gateway", "sessions"),
    "llm": ("grpc", "engine", "cache"),
    "vision": ("grpc", "vision", "cache"),
}
