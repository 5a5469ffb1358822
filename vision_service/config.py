"""The vision service's configuration: one frozen dataclass, built once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.serving.options import opt

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class VisionConfig:
    """Everything ``python -m vision_service`` accepts; ``--help`` lists each field."""

    model: str = field(
        default="", metadata=opt("checkpoint folder or Hugging Face hub id of the VLM", env="TANDEM_MODEL")
    )
    revision: str | None = field(
        default=None, metadata=opt("hub revision (branch, tag or commit) of --model", env="TANDEM_REVISION")
    )
    redis_url: str = field(
        default="",
        metadata=opt(
            'embedding cache, e.g. redis://host:6379/0; "" = no cache (inline only)', env="REDIS_URL"
        ),
    )
    redis_timeout_seconds: float = field(
        default=0.5, metadata=opt("per-command Redis timeout; a slow Redis counts as down")
    )
    device: str = field(
        default="cpu", metadata=opt("torch device of the encoder", env="TANDEM_VISION_DEVICE")
    )
    dtype: str = field(default="float32", metadata=opt("encoder and embedding dtype", choices=DTYPES))
    max_batch: int = field(default=8, metadata=opt("most images in one encoder forward"))
    max_images_per_request: int = field(default=32, metadata=opt("most images in one Encode call"))
    max_pending_images: int = field(
        default=64,
        metadata=opt(
            "most images admitted for encoding at once (queued, preprocessing or encoding); "
            "more get RESOURCE_EXHAUSTED"
        ),
    )
    max_image_bytes: int = field(default=20 * 1024 * 1024, metadata=opt("largest accepted image file, bytes"))
    max_image_pixels: int = field(
        default=40_000_000,
        metadata=opt(
            "largest accepted width*height, checked from the file header (Pillow's bomb guard also applies)"
        ),
    )
    max_aspect_ratio: float = field(
        default=100.0, metadata=opt("largest accepted long side / short side of an image")
    )
    preprocess_threads: int = field(default=2, metadata=opt("threads that decode and preprocess images"))
    embedding_ttl_seconds: int = field(default=3600, metadata=opt("lifetime of a cached embedding"))
    image_ttl_seconds: int = field(
        default=7 * 24 * 3600, metadata=opt("lifetime of stored image bytes (>= embedding TTL)")
    )
    cache_prefix: str = field(
        default="tandem", metadata=opt("key prefix shared by all Tandem services", env="TANDEM_CACHE_PREFIX")
    )
    lease_seconds: float = field(
        default=30.0, metadata=opt("lifetime of a cross-replica encode lease (longer than one encode)")
    )
    lease_wait_seconds: float = field(
        default=30.0, metadata=opt("longest wait for another replica's encode before encoding here")
    )
    log_level: str = field(default="INFO", metadata=opt("logging level", env="TANDEM_LOG_LEVEL"))
    host: str = field(default="127.0.0.1", metadata=opt("address to listen on", env="TANDEM_VISION_HOST"))
    port: int = field(
        default=50053, metadata=opt("port to listen on (0 = any free)", env="TANDEM_VISION_PORT")
    )
    max_message_bytes: int = field(default=64 * 1024 * 1024, metadata=opt("largest gRPC message, bytes"))
    grace_seconds: float = field(default=10.0, metadata=opt("drain time for running calls on SIGTERM"))
    reflection: bool = field(default=True, metadata=opt("serve gRPC reflection"))
    auth_token: str | None = field(
        default=None, metadata=opt("require this bearer token on every call", env="TANDEM_AUTH_TOKEN")
    )
    tls_cert: str | None = field(default=None, metadata=opt("PEM certificate file (TLS on when set)"))
    tls_key: str | None = field(default=None, metadata=opt("PEM private key file for --tls-cert"))
    port_file: str | None = field(default=None, metadata=opt("write the bound port to this file"))

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required (a checkpoint folder or hub id)")
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.dtype=} must be one of {DTYPES}")
        for name in ("max_batch", "max_images_per_request", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_pending_images < self.max_images_per_request:
            raise ValueError(f"{self.max_pending_images=} must be >= {self.max_images_per_request=}")
        if self.preprocess_threads < 1:
            raise ValueError(f"{self.preprocess_threads=} must be >= 1")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"{self.max_aspect_ratio=} must be >= 1")
        if self.embedding_ttl_seconds < 1 or self.image_ttl_seconds < self.embedding_ttl_seconds:
            raise ValueError(f"{self.embedding_ttl_seconds=} must be >= 1 and <= {self.image_ttl_seconds=}")
        if self.lease_seconds <= 0 or self.lease_wait_seconds < 0 or self.redis_timeout_seconds <= 0:
            raise ValueError(
                f"{self.lease_seconds=} and {self.redis_timeout_seconds=} must be > 0, "
                f"{self.lease_wait_seconds=} >= 0"
            )
