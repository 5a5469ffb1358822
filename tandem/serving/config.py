"""What every Tandem service is configured with: its gRPC listener and its Redis.

``ServiceConfig`` is the base of ``GatewayConfig``, ``LlmConfig`` and ``VisionConfig``: every
service takes the same server and Redis flags and reads the same environment variables, listed
in ``--help`` under "server options" and "redis options". What differs by service is declared
by the service itself, with the same help text: the variables of its listen address
(``listen_host``/``listen_port``) and, where it needs another, a default (``with_default``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tandem.serving.api_keys import ApiKeys
from tandem.serving.logs import LOG_FORMATS
from tandem.serving.options import check_choices, opt

MIB = 1024 * 1024
SERVER = "server"
REDIS = "redis"
INTERNAL_TENANT = "internal"  # what a worker's access log names the gateway's calls


def listen_host(env: str | None = None) -> Any:
    """The ``host`` field; ``env`` is the service's own variable (e.g. ``TANDEM_LLM_HOST``)."""
    return field(default="127.0.0.1", metadata=opt("address to listen on", env=env, group=SERVER))


def listen_port(default: int = 0, env: str | None = None) -> Any:
    """The ``port`` field; ``env`` is the service's own variable (e.g. ``TANDEM_LLM_PORT``)."""
    return field(default=default, metadata=opt("gRPC port (0 picks a free one)", env=env, group=SERVER))


def with_default(cls: type[Any], name: str, default: object) -> Any:
    """``cls``'s field ``name`` with another default (same help, variable and group), to
    redeclare in a subclass."""
    (base,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return field(default=default, metadata=base.metadata)


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC listener (address, message size, drain period, reflection, auth, TLS), the
    metrics port, and the process's log level and format."""

    host: str = listen_host()
    port: int = listen_port()
    max_message_bytes: int = field(
        default=64 * MIB,
        metadata=opt(
            "largest gRPC message received or sent, bytes (the gateway's calls to the workers too)",
            env="TANDEM_MAX_MESSAGE_BYTES",
            group=SERVER,
        ),
    )
    grace_seconds: float = field(
        default=10.0,
        metadata=opt(
            "how long running calls may finish after SIGTERM", env="TANDEM_GRACE_SECONDS", group=SERVER
        ),
    )
    reflection: bool = field(
        default=True, metadata=opt("serve gRPC reflection", env="TANDEM_REFLECTION", group=SERVER)
    )
    auth_token: str | None = field(
        default=None,
        repr=False,
        metadata=opt(
            "bearer token every call must carry (health excepted); unset: no auth",
            env="TANDEM_AUTH_TOKEN",
            group=SERVER,
        ),
    )
    internal_token: str | None = field(
        default=None,
        repr=False,
        metadata=opt(
            "bearer token between the gateway and the workers: the workers require it instead of "
            "--auth-token (public keys never open them), the gateway sends it to them",
            env="TANDEM_INTERNAL_TOKEN",
            group=SERVER,
        ),
    )
    tls_cert: str | None = field(
        default=None,
        metadata=opt("PEM certificate file; enables TLS", env="TANDEM_TLS_CERT", group=SERVER),
    )
    tls_key: str | None = field(
        default=None,
        metadata=opt("PEM private key file for --tls-cert", env="TANDEM_TLS_KEY", group=SERVER),
    )
    port_file: str | None = field(
        default=None,
        metadata=opt(
            "write the bound port to this file once listening", env="TANDEM_PORT_FILE", group=SERVER
        ),
    )
    metrics_port: int = field(
        default=0,
        metadata=opt(
            "serve Prometheus GET /metrics on this port (0 = off; the gateway also serves it on its "
            "HTTP port)",
            env="TANDEM_METRICS_PORT",
            group=SERVER,
        ),
    )
    log_level: str = field(
        default="INFO", metadata=opt("logging level", env="TANDEM_LOG_LEVEL", group=SERVER)
    )
    log_format: str = field(
        default="text",
        metadata=opt(
            "log lines as text or as JSON objects (each with the request id)",
            env="TANDEM_LOG_FORMAT",
            choices=LOG_FORMATS,
            group=SERVER,
        ),
    )
    nice: int = field(
        default=0,
        metadata=opt(
            "run this process at least this nice (0-19, lower CPU priority): on a machine it shares "
            "with a model, a gateway at 10 yields the cores to the model's threads",
            env="TANDEM_NICE",
            group=SERVER,
        ),
    )

    def worker_keys(self) -> ApiKeys:
        """The one key a worker (vision, language) requires: the internal token, or, where none
        is set, ``auth_token`` as before the internal token existed."""
        return ApiKeys.single(self.internal_token or self.auth_token, tenant=INTERNAL_TENANT)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{self.port=} must be in 0..65535")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"{self.metrics_port=} must be in 0..65535 (0 = off)")
        if self.max_message_bytes < 4 * MIB:
            raise ValueError(f"{self.max_message_bytes=} must be >= 4 MiB")
        if self.grace_seconds < 0:
            raise ValueError(f"{self.grace_seconds=} must be >= 0")
        if not 0 <= self.nice <= 19:
            raise ValueError(f"{self.nice=} must be in 0..19")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")


@dataclass(frozen=True)
class RedisConfig:
    """The shared Redis: the cache and state URLs, key prefix and the per-command timeout.

    Two roles (README, "State and cache"): the *cache* (``redis_url``: embeddings, encode
    leases, the image bytes of requests without a session; bounded, ``allkeys-lru`` is right)
    and the *state* (``state_url``: sessions, turn locks, idempotency fences, tenant ownership
    and accounting, the image bytes of sessions; never evicted, persistent). Only the gateway
    keeps state; the workers use the cache alone. Without ``state_redis_url`` the state shares
    the cache's Redis, which is then only safe with ``maxmemory-policy noeviction`` (the
    gateway refuses to start on one that evicts).
    """

    redis_url: str = field(
        default="",
        metadata=opt(
            'Redis cache (embeddings, image bytes of stateless requests), e.g. redis://host:6379/0; "" = '
            "none (a worker then hands embeddings over inline); also the state Redis unless "
            "--state-redis-url is set",
            env="REDIS_URL",
            group=REDIS,
        ),
    )
    state_redis_url: str = field(
        default="",
        metadata=opt(
            "Redis for state that must never be evicted (sessions, turn locks, idempotency, tenant "
            'ownership and usage, session images): persistent, maxmemory-policy noeviction; "" = '
            "the --redis-url one (then that Redis must not evict)",
            env="TANDEM_STATE_REDIS_URL",
            group=REDIS,
        ),
    )
    cache_prefix: str = field(
        default="tandem",
        metadata=opt(
            "key prefix shared by all Tandem services in Redis", env="TANDEM_CACHE_PREFIX", group=REDIS
        ),
    )
    redis_timeout_seconds: float = field(
        default=0.5,
        metadata=opt("per-command Redis timeout; a slow Redis counts as down", group=REDIS),
    )

    @property
    def state_url(self) -> str:
        """The state role's Redis: ``state_redis_url``, else the cache's ``redis_url``."""
        return self.state_redis_url or self.redis_url

    def __post_init__(self) -> None:
        if not self.cache_prefix:
            raise ValueError("cache_prefix must not be empty")
        if self.redis_timeout_seconds <= 0:
            raise ValueError(f"{self.redis_timeout_seconds=} must be > 0")


@dataclass(frozen=True)
class ServiceConfig(RedisConfig, ServerConfig):
    """The base of each service's config: server and Redis settings, checked together with every
    field's ``choices``; subclasses call ``super().__post_init__()`` first."""

    def __post_init__(self) -> None:
        ServerConfig.__post_init__(self)
        RedisConfig.__post_init__(self)
        check_choices(self)
