"""The language worker's configuration: one frozen dataclass, built once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.serving.options import opt

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LlmConfig:
    """Everything ``python -m llm_service`` can be told (``--help`` lists it with env variables)."""

    model: str = field(
        default="", metadata=opt("checkpoint folder or Hugging Face hub id (required)", env="TANDEM_MODEL")
    )
    revision: str | None = field(
        default=None,
        metadata=opt("hub revision of the model (part of the cache fingerprint)", env="TANDEM_REVISION"),
    )
    redis_url: str = field(
        default="",
        metadata=opt(
            "Redis holding the image embeddings written by the vision service; empty: inline embeddings only",
            env="REDIS_URL",
        ),
    )
    redis_timeout_seconds: float = field(
        default=0.5, metadata=opt("per-command Redis timeout; a slow Redis counts as down")
    )
    cache_prefix: str = field(
        default="tandem", metadata=opt("key prefix of the shared embedding cache", env="TANDEM_CACHE_PREFIX")
    )
    device: str = field(
        default="auto",
        metadata=opt(
            "where the model runs (auto: cuda if present)", env="TANDEM_LLM_DEVICE", choices=DEVICES
        ),
    )
    dtype: str = field(
        default="auto",
        metadata=opt(
            "weight dtype (auto: the checkpoint's; float16 becomes float32 on CPU)",
            env="TANDEM_LLM_DTYPE",
            choices=DTYPES,
        ),
    )
    max_batch_size: int = field(
        default=16,
        metadata=opt("sequences decoded together (continuous batching)", env="TANDEM_MAX_BATCH_SIZE"),
    )
    max_queue: int = field(
        default=64,
        metadata=opt("requests waiting for a slot before RESOURCE_EXHAUSTED", env="TANDEM_MAX_QUEUE"),
    )
    max_new_tokens_default: int = field(
        default=256,
        metadata=opt(
            "max_new_tokens when a request leaves it at 0 (clamped to the context)",
            env="TANDEM_MAX_NEW_TOKENS",
        ),
    )
    context_length: int = field(
        default=0,
        metadata=opt(
            "prompt + generated tokens limit; 0: the model's max_position_embeddings",
            env="TANDEM_CONTEXT_LENGTH",
        ),
    )
    max_prefill_tokens: int = field(
        default=512,
        metadata=opt(
            "prompt positions prefilled between two decode steps (longer prompts are chunked); "
            "raise it on a GPU",
            env="TANDEM_MAX_PREFILL_TOKENS",
        ),
    )
    session_cache_entries: int = field(
        default=64,
        metadata=opt(
            "sessions whose last turn's KV is kept for reuse (LRU); 0 disables", env="TANDEM_SESSION_CACHE"
        ),
    )
    host: str = field(default="127.0.0.1", metadata=opt("address to listen on", env="TANDEM_LLM_HOST"))
    port: int = field(default=50052, metadata=opt("gRPC port (0 picks a free one)", env="TANDEM_LLM_PORT"))
    max_message_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata=opt(
            "largest gRPC message accepted or sent (inline embeddings)", env="TANDEM_MAX_MESSAGE_BYTES"
        ),
    )
    grace_seconds: float = field(
        default=10.0,
        metadata=opt("how long running streams may finish after SIGTERM", env="TANDEM_GRACE_SECONDS"),
    )
    reflection: bool = field(default=True, metadata=opt("serve gRPC reflection", env="TANDEM_REFLECTION"))
    auth_token: str | None = field(
        default=None,
        metadata=opt("bearer token every call must carry; unset: no auth", env="TANDEM_AUTH_TOKEN"),
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
    log_level: str = field(default="INFO", metadata=opt("logging level", env="TANDEM_LOG_LEVEL"))

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required (a checkpoint folder or a hub id)")
        if self.device not in DEVICES:
            raise ValueError(f"{self.device=} must be one of {DEVICES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.dtype=} must be one of {DTYPES}")
        if self.max_batch_size < 1:
            raise ValueError(f"{self.max_batch_size=} must be >= 1")
        if self.max_queue < 0:
            raise ValueError(f"{self.max_queue=} must be >= 0")
        if self.max_new_tokens_default < 1:
            raise ValueError(f"{self.max_new_tokens_default=} must be >= 1")
        if self.context_length < 0:
            raise ValueError(f"{self.context_length=} must be >= 0 (0: from the model config)")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"{self.max_prefill_tokens=} must be >= 1")
        if self.session_cache_entries < 0:
            raise ValueError(f"{self.session_cache_entries=} must be >= 0")
        if self.redis_timeout_seconds <= 0:
            raise ValueError(f"{self.redis_timeout_seconds=} must be > 0")
        if not self.cache_prefix:
            raise ValueError("cache_prefix must not be empty")
