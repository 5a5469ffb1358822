"""The gateway's configuration: one frozen dataclass, built once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.serving.options import opt

_MIB = 1024 * 1024


@dataclass(frozen=True)
class GatewayConfig:
    """Everything ``python -m gateway`` accepts; ``--help`` lists each field and its variable."""

    llm_addresses: tuple[str, ...] = field(
        default=("127.0.0.1:50052",),
        metadata=opt(
            "language service replicas, comma-separated host:port; a session's turns stick to one "
            "replica by rendezvous hashing of its id",
            env="TANDEM_LLM_ADDRESSES",
        ),
    )
    vision_addresses: tuple[str, ...] = field(
        default=(),
        metadata=opt(
            "vision service replicas, comma-separated host:port (round robin); empty is allowed "
            "only for a text-only model",
            env="TANDEM_VISION_ADDRESSES",
        ),
    )
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata=opt("Redis holding the sessions (and, for the workers, the embeddings)", env="REDIS_URL"),
    )
    cache_prefix: str = field(
        default="tandem",
        metadata=opt("key prefix shared by all Tandem services in Redis", env="TANDEM_CACHE_PREFIX"),
    )
    session_ttl_seconds: int = field(
        default=3600, metadata=opt("session inactivity TTL when a client asks for none (refreshed per turn)")
    )
    max_session_ttl_seconds: int = field(
        default=7 * 24 * 3600, metadata=opt("largest session TTL a client may ask for")
    )
    turn_lock_seconds: float = field(
        default=30.0,
        metadata=opt(
            "lifetime of a session's turn lock (renewed while the turn runs; bounds a crashed turn)"
        ),
    )
    max_images_per_request: int = field(default=8, metadata=opt("most new images in one request"))
    max_image_bytes: int = field(
        default=16 * _MIB, metadata=opt("largest image, bytes (after base64 decoding)")
    )
    max_request_bytes: int = field(
        default=40 * _MIB,
        metadata=opt("largest total of a request's image bytes (data, data: URIs and URLs)"),
    )
    url_fetch_timeout_seconds: float = field(
        default=10.0, metadata=opt("total time to fetch one image URL, redirects included")
    )
    url_max_redirects: int = field(default=3, metadata=opt("most redirects followed for an image URL"))
    url_allowed_domains: tuple[str, ...] = field(
        default=(),
        metadata=opt(
            "if set, image URLs must be on these domains (or their subdomains), comma-separated",
            env="TANDEM_URL_ALLOWED_DOMAINS",
        ),
    )
    allow_private_urls: bool = field(
        default=False,
        metadata=opt("DEV/TEST ONLY: let image URLs reach loopback and private addresses (SSRF risk)"),
    )
    max_new_tokens_default: int = field(
        default=256, metadata=opt("max_new_tokens when a request leaves it at 0", env="TANDEM_MAX_NEW_TOKENS")
    )
    startup_timeout_seconds: float = field(
        default=0.0,
        metadata=opt("give up if the downstream services have not answered by then; 0 waits forever"),
    )
    downstream_auth_token: str | None = field(
        default=None,
        metadata=opt(
            "bearer token sent to the vision and language services", env="TANDEM_DOWNSTREAM_AUTH_TOKEN"
        ),
    )
    downstream_tls_ca: str | None = field(
        default=None,
        metadata=opt(
            "PEM CA bundle: call the vision and language services over TLS", env="TANDEM_DOWNSTREAM_TLS_CA"
        ),
    )
    max_images_per_encode: int = field(
        default=32,
        metadata=opt(
            "most images in one Encode call (the vision service's --max-images-per-request); "
            "a long session's images are split into parallel calls"
        ),
    )
    max_request_seconds: float = field(
        default=600.0,
        metadata=opt("deadline of a request whose client set none, or a longer one; 0 = no limit"),
    )
    log_level: str = field(default="INFO", metadata=opt("logging level", env="TANDEM_LOG_LEVEL"))
    host: str = field(default="127.0.0.1", metadata=opt("address to listen on", env="TANDEM_GATEWAY_HOST"))
    port: int = field(
        default=50051, metadata=opt("gRPC port (0 picks a free one)", env="TANDEM_GATEWAY_PORT")
    )
    max_message_bytes: int = field(
        default=64 * _MIB, metadata=opt("largest gRPC message, on the public listener and every internal hop")
    )
    grace_seconds: float = field(
        default=10.0, metadata=opt("how long running streams may finish after SIGTERM")
    )
    reflection: bool = field(default=False, metadata=opt("serve gRPC reflection on the public listener"))
    auth_token: str | None = field(
        default=None,
        metadata=opt("bearer token every public call must carry; unset: no auth", env="TANDEM_AUTH_TOKEN"),
    )
    tls_cert: str | None = field(
        default=None, metadata=opt("PEM certificate file; enables TLS", env="TANDEM_TLS_CERT")
    )
    tls_key: str | None = field(
        default=None, metadata=opt("PEM private key file for --tls-cert", env="TANDEM_TLS_KEY")
    )
    port_file: str | None = field(
        default=None, metadata=opt("write the bound port to this file once listening", env="TANDEM_PORT_FILE")
    )
    http_port: int = field(
        default=-1,
        metadata=opt(
            "OpenAI-compatible HTTP port (/v1/chat/completions); 0 picks a free one, -1 turns it off",
            env="TANDEM_HTTP_PORT",
        ),
    )
    http_port_file: str | None = field(
        default=None, metadata=opt("write the bound HTTP port to this file once listening")
    )

    def __post_init__(self) -> None:
        if not self.llm_addresses:
            raise ValueError("--llm-addresses needs at least one host:port")
        if not self.cache_prefix:
            raise ValueError("cache_prefix must not be empty")
        for name in (
            "session_ttl_seconds",
            "max_images_per_request",
            "max_image_bytes",
            "max_new_tokens_default",
            "max_images_per_encode",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_session_ttl_seconds < self.session_ttl_seconds:
            raise ValueError(f"{self.max_session_ttl_seconds=} must be >= {self.session_ttl_seconds=}")
        if not self.max_image_bytes <= self.max_request_bytes < self.max_message_bytes:
            raise ValueError(
                f"need {self.max_image_bytes=} <= {self.max_request_bytes=} < {self.max_message_bytes=} "
                "(image bytes must fit in one message to the vision service)"
            )
        if self.url_fetch_timeout_seconds <= 0 or self.turn_lock_seconds <= 0:
            raise ValueError(f"{self.url_fetch_timeout_seconds=} and {self.turn_lock_seconds=} must be > 0")
        if not -1 <= self.http_port <= 65535:
            raise ValueError(f"{self.http_port=} must be in 0..65535, or -1 for no HTTP listener")
        if min(self.url_max_redirects, self.startup_timeout_seconds, self.max_request_seconds) < 0:
            raise ValueError(
                f"{self.url_max_redirects=}, {self.startup_timeout_seconds=} and "
                f"{self.max_request_seconds=} must be >= 0"
            )
