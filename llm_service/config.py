"""The language worker's configuration: one frozen dataclass, built once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from tandem.serving.config import ServiceConfig, listen_host, listen_port
from tandem.serving.options import at_least, opt

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LlmConfig(ServiceConfig):
    """Everything ``python -m llm_service`` can be told (``--help`` lists it with env variables).

    The listener, Redis and logging fields are ``ServiceConfig``'s; the worker listens on 50052
    and reads image embeddings written by the vision service from Redis (empty URL: inline only).
    """

    model: str = field(
        default="", metadata=opt("checkpoint folder or Hugging Face hub id (required)", env="TANDEM_MODEL")
    )
    revision: str | None = field(
        default=None,
        metadata=opt("hub revision of the model (part of the cache fingerprint)", env="TANDEM_REVISION"),
    )
    served_model_name: str = field(
        default="",
        metadata=opt(
            "the model's public id (GET /v1/models, GetModelInfo, the OpenAI model field); default: "
            "the checkpoint folder's or hub id's last part",
            env="TANDEM_SERVED_MODEL_NAME",
        ),
    )
    chat_template: str = field(
        default="",
        metadata=opt(
            "a Jinja chat template (file or the template itself) replacing the checkpoint's",
            env="TANDEM_CHAT_TEMPLATE",
        ),
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
            "weight dtype (auto: the checkpoint's; float32 on a CPU that emulates its half precision)",
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
    max_running_per_tenant: int = field(
        default=0,
        metadata=opt(
            "batch slots one tenant may hold while another tenant waits (queued requests are "
            "admitted round robin over tenants); 0: --max-batch-size minus 1",
            env="TANDEM_MAX_RUNNING_PER_TENANT",
        ),
    )
    host: str = listen_host(env="TANDEM_LLM_HOST")
    port: int = listen_port(50052, env="TANDEM_LLM_PORT")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ValueError("--model is required (a checkpoint folder or a hub id)")
        at_least(self, 1, "max_batch_size", "max_new_tokens_default", "max_prefill_tokens")
        at_least(self, 0, "max_queue", "context_length", "session_cache_entries", "max_running_per_tenant")
