"""The gateway's configuration: one frozen dataclass, built once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.discovery import DnsName
from tandem.serving.api_keys import ApiKeys, load_api_keys
from tandem.serving.config import (
    MIB,
    RedisConfig,
    ServerConfig,
    ServiceConfig,
    listen_host,
    listen_port,
    with_default,
)
from tandem.serving.options import at_least, opt

CACHE_SCOPES = ("shared", "tenant")


@dataclass(frozen=True)
class GatewayConfig(ServiceConfig):
    """Everything ``python -m gateway`` accepts; ``--help`` lists each field and its variable.

    The listener, Redis and logging fields are ``ServiceConfig``'s; the gateway listens on
    50051, serves no reflection on its public listener unless asked, and needs Redis (sessions).
    """

    llm_addresses: tuple[str, ...] = field(
        default=("127.0.0.1:50052",),
        metadata=opt(
            "language service replicas, comma-separated host:port; a session's turns stick to one "
            "replica by rendezvous hashing of its id, other calls go by a hash of their prompt's "
            "opening (same image or same conversation -> same replica's prefix cache), bounded by load. "
            "dns:///NAME:PORT (e.g. a Kubernetes headless Service) is resolved by the gateway: one "
            "replica per address, re-resolved every --llm-resolve-seconds",
            env="TANDEM_LLM_ADDRESSES",
        ),
    )
    llm_resolve_seconds: float = field(
        default=10.0,
        metadata=opt(
            "how often the gateway re-resolves dns:///NAME:PORT language addresses (pods added or gone)"
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
        default=16 * MIB, metadata=opt("largest image, bytes (after base64 decoding)")
    )
    max_request_bytes: int = field(
        default=40 * MIB,
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
    startup_timeout_seconds: float = field(
        default=0.0,
        metadata=opt("give up if the downstream services have not answered by then; 0 waits forever"),
    )
    downstream_auth_token: str | None = field(
        default=None,
        repr=False,
        metadata=opt(
            "bearer token sent to the vision and language services when --internal-token is "
            "unset (its older name)",
            env="TANDEM_DOWNSTREAM_AUTH_TOKEN",
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
    api_key: tuple[str, ...] = field(
        default=(),
        repr=False,
        metadata=opt(
            "API key NAME=TOKEN: calls with `authorization: Bearer TOKEN` belong to tenant NAME "
            "(comma-separated in the variable); with --api-keys-file and --auth-token (tenant "
            "'default') these are the public keys; none: no auth, one anonymous tenant",
            env="TANDEM_API_KEYS",
            repeatable=True,
        ),
    )
    api_keys_file: str | None = field(
        default=None,
        metadata=opt(
            "file of NAME=TOKEN lines, or a directory of files named by tenant holding its token "
            "(a mounted Kubernetes Secret)",
            env="TANDEM_API_KEYS_FILE",
        ),
    )
    cache_scope: str = field(
        default="shared",
        metadata=opt(
            "shared: tenants sending the same image share its embedding (the cache works across "
            "tenants; a tenant can time whether an image was seen); tenant: image keys are salted "
            "per tenant (no cross-tenant reuse, no timing side channel)",
            env="TANDEM_CACHE_SCOPE",
            choices=CACHE_SCOPES,
        ),
    )
    max_system_prompt_bytes: int = field(
        default=64 * 1024, metadata=opt("largest session system prompt, UTF-8 bytes")
    )
    max_sessions_per_tenant: int = field(
        default=10_000, metadata=opt("most live sessions of one tenant; 0 = no limit")
    )
    max_stored_bytes_per_tenant: int = field(
        default=1024 * MIB,
        metadata=opt(
            "most bytes one tenant keeps in Redis (session records and the image bytes it sent, "
            "counted approximately); 0 = no limit"
        ),
    )
    max_inflight_bytes: int = field(
        default=256 * MIB,
        metadata=opt(
            "most request bytes the gateway holds at once (HTTP bodies and gRPC Generate/Chat "
            "messages); a request past it waits briefly, then gets RESOURCE_EXHAUSTED (HTTP 429)",
            env="TANDEM_MAX_INFLIGHT_BYTES",
        ),
    )
    http_read_timeout_seconds: float = field(
        default=30.0,
        metadata=opt(
            "an HTTP client has this long to send a request's headers, and again its body; a slower "
            "one is cut (slowloris), with 408 once its headers are in"
        ),
    )
    health_check_seconds: float = field(
        default=2.0,
        metadata=opt(
            "how often the gateway checks what it needs (a language replica, the state Redis); "
            "health is NOT_SERVING while one is down"
        ),
    )
    host: str = listen_host(env="TANDEM_GATEWAY_HOST")
    port: int = listen_port(50051, env="TANDEM_GATEWAY_PORT")
    reflection: bool = with_default(ServerConfig, "reflection", False)
    redis_url: str = with_default(RedisConfig, "redis_url", "redis://127.0.0.1:6379/0")
    redis_timeout_seconds: float = with_default(RedisConfig, "redis_timeout_seconds", 2.0)

    def api_keys(self) -> ApiKeys:
        """The public keys: --api-key entries, the keys file (read now) and --auth-token."""
        return load_api_keys(self.api_key, self.api_keys_file, self.auth_token)

    def downstream_token(self) -> str | None:
        """What the gateway sends the workers: the internal token (or its older name)."""
        return self.internal_token or self.downstream_auth_token

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.llm_addresses:
            raise ValueError("--llm-addresses needs at least one host:port")
        for address in self.llm_addresses:
            DnsName.parse(address)  # a malformed dns:/// address fails here
        at_least(
            self,
            1,
            "session_ttl_seconds",
            "max_images_per_request",
            "max_image_bytes",
            "max_images_per_encode",
            "max_system_prompt_bytes",
        )
        at_least(self, 0, "max_sessions_per_tenant", "max_stored_bytes_per_tenant")
        ApiKeys.parse(self.api_key)  # a malformed key fails here, at the edge
        if self.max_session_ttl_seconds < self.session_ttl_seconds:
            raise ValueError(f"{self.max_session_ttl_seconds=} must be >= {self.session_ttl_seconds=}")
        if not self.max_image_bytes <= self.max_request_bytes < self.max_message_bytes:
            raise ValueError(
                f"need {self.max_image_bytes=} <= {self.max_request_bytes=} < {self.max_message_bytes=} "
                "(image bytes must fit in one message to the vision service)"
            )
        if min(self.http_read_timeout_seconds, self.health_check_seconds, self.llm_resolve_seconds) <= 0:
            raise ValueError(
                f"{self.http_read_timeout_seconds=}, {self.health_check_seconds=} and "
                f"{self.llm_resolve_seconds=} must be > 0"
            )
        if self.max_inflight_bytes < self.max_message_bytes:
            raise ValueError(
                f"{self.max_inflight_bytes=} must be >= {self.max_message_bytes=} (one request must fit)"
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
