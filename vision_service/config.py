"""The vision service's configuration: one frozen dataclass, built once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.models.packed_linear import KERNELS
from tandem.serving.config import ServiceConfig, listen_host, listen_port
from tandem.serving.options import at_least, opt

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class VisionConfig(ServiceConfig):
    """Everything ``python -m vision_service`` accepts; ``--help`` lists each field.

    The listener, Redis and logging fields are ``ServiceConfig``'s; the service listens on 50053
    and caches embeddings and image bytes in Redis (empty URL: no cache, inline answers only).
    """

    model: str = field(
        default="", metadata=opt("checkpoint folder or Hugging Face hub id of the VLM", env="TANDEM_MODEL")
    )
    revision: str | None = field(
        default=None, metadata=opt("hub revision (branch, tag or commit) of --model", env="TANDEM_REVISION")
    )
    device: str = field(
        default="cpu", metadata=opt("torch device of the encoder", env="TANDEM_VISION_DEVICE")
    )
    dtype: str = field(default="float32", metadata=opt("encoder and embedding dtype", choices=DTYPES))
    cpu_kernels: str = field(
        default="onednn",
        metadata=opt(
            "matmul kernels on a CPU: onednn (linear weights prepacked once at load) or torch "
            "(plain nn.Linear)",
            env="TANDEM_CPU_KERNELS",
            choices=KERNELS,
        ),
    )
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
        default=4096 * 4096,
        metadata=opt(
            "largest accepted width*height, checked from the file header (Pillow's bomb guard also "
            "applies); the default, 4096x4096 (16.8 Mpx), is above what VLM processors keep (they "
            "resize to a few Mpx at most: Qwen2-VL's max_pixels is 12.8 Mpx, LLaVA's input 0.1 Mpx), "
            "while decoding costs 4+ bytes per pixel"
        ),
    )
    max_aspect_ratio: float = field(
        default=100.0, metadata=opt("largest accepted long side / short side of an image")
    )
    preprocess_threads: int = field(default=2, metadata=opt("threads that decode and preprocess images"))
    embedding_ttl_seconds: int = field(default=3600, metadata=opt("lifetime of a cached embedding"))
    image_ttl_seconds: int = field(
        default=900,
        metadata=opt(
            "lifetime of the image bytes the cache keeps after an encode, i.e. how long an image id "
            "of a request without a session can be sent again (a session's images are kept by the "
            "gateway for as long as the session)",
            env="TANDEM_IMAGE_TTL_SECONDS",
        ),
    )
    lease_seconds: float = field(
        default=30.0, metadata=opt("lifetime of a cross-replica encode lease (longer than one encode)")
    )
    lease_wait_seconds: float = field(
        default=30.0, metadata=opt("longest wait for another replica's encode before encoding here")
    )
    host: str = listen_host(env="TANDEM_VISION_HOST")
    port: int = listen_port(50053, env="TANDEM_VISION_PORT")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ValueError("--model is required (a checkpoint folder or hub id)")
        at_least(
            self,
            1,
            "max_batch",
            "max_images_per_request",
            "max_image_bytes",
            "max_image_pixels",
            "preprocess_threads",
            "max_aspect_ratio",
        )
        if self.max_pending_images < self.max_images_per_request:
            raise ValueError(f"{self.max_pending_images=} must be >= {self.max_images_per_request=}")
        at_least(self, 1, "embedding_ttl_seconds", "image_ttl_seconds")
        if self.lease_seconds <= 0 or self.lease_wait_seconds < 0:
            raise ValueError(f"{self.lease_seconds=} must be > 0 and {self.lease_wait_seconds=} >= 0")
