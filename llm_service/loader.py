"""Load the language half of a checkpoint: decoder, LM head, tokenizer and chat template.

The decoder is built from the text sub-config with its parameters on the meta device (buffers
such as RoPE frequencies are computed for real), then filled by ``load_subset`` with only the
tensors under the adapter's prefixes, so the vision tower and projector are never read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, GenerationConfig

from llm_service.adapters import Adapter, adapter_for
from llm_service.chat_template import load_chat_template
from llm_service.config import LlmConfig
from llm_service.model import CausalLM, HFLanguageModel
from tandem.models.checkpoint import iter_tensor_names, load_subset, resolve
from tandem.models.fingerprint import fingerprint
from tandem.models.meta import parameters_on_meta
from tandem.models.packed_linear import prepack_linears

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """Everything the worker needs from the checkpoint."""

    path: Path
    model: HFLanguageModel
    adapter: Adapter
    tokenizer: Any
    chat_template: str
    eos_token_ids: tuple[int, ...]
    max_positions: int
    fingerprint: str

    @property
    def architecture(self) -> str:
        return str(self.adapter.config.architectures[0])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# CPU feature flags (/proc/cpuinfo) that mean bfloat16 matmuls run natively, not emulated.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512/AMX, aarch64


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (True where it cannot be told: not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return not NATIVE_BF16_FLAGS.isdisjoint(value.split())
    return True


def resolve_dtype(
    name: str, config: Any, device: torch.device, native_bf16: bool | None = None
) -> torch.dtype:
    """The dtype the language model computes in.

    ``auto``: the checkpoint's (float32 if unset), except on a CPU where half precision is
    emulated: float16 always, and bfloat16 where the CPU lacks native bf16 (AVX2-only x86: a
    bf16 linear layer there is 2x slower than float32 for one row and about 4x for a batch of
    16), compute in float32. Weights then take twice the memory; ``--dtype bfloat16`` keeps them.
    """
    if name != "auto":
        return getattr(torch, name)  # type: ignore[no-any-return]
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    dtype = getattr(torch, declared) if isinstance(declared, str) else declared
    if device.type != "cpu" or dtype not in (torch.float16, torch.bfloat16):
        return dtype  # type: ignore[no-any-return]
    if dtype == torch.bfloat16 and (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
        return dtype  # type: ignore[no-any-return]
    log.info("%s weights computed in float32: this CPU has no native %s matmuls", dtype, dtype)
    return torch.float32


def _ties_embeddings(config: Any, text_config: Any) -> bool:
    return bool(
        getattr(config, "tie_word_embeddings", False) or getattr(text_config, "tie_word_embeddings", False)
    )


def _has_head_bias(path: Path, prefixes: dict[str, str]) -> bool:
    """Whether the checkpoint's LM head has a bias (Phi-1/2 do; most decoders do not)."""
    heads = [source for source, target in prefixes.items() if target == "lm_head."]
    return any(name in {h + "bias" for h in heads} for _, name in iter_tensor_names(path))


def build_language_model(
    path: Path,
    adapter: Adapter,
    device: torch.device,
    dtype: torch.dtype,
    kernels: str = "onednn",
    decode_path: str = "lean",
) -> HFLanguageModel:
    """The decoder and LM head of ``path``, filled with only their own tensors; on a CPU their
    linear layers' weights prepacked for oneDNN unless ``kernels`` is "torch" (packed_linear.py)."""
    text_config = adapter.text_config
    tied = _ties_embeddings(adapter.config, text_config)
    with parameters_on_meta():
        decoder = AutoModel.from_config(text_config, dtype=dtype)
        hidden, vocab = int(text_config.hidden_size), int(text_config.vocab_size)
        module = CausalLM(decoder, hidden, vocab, tied, _has_head_bias(path, adapter.weight_prefixes))
    prefixes = adapter.weight_prefixes
    if tied:
        prefixes = {k: v for k, v in prefixes.items() if v != "lm_head."}
    load_subset(path, module, prefixes, dtype)
    if tied:
        module.lm_head.weight = module.embeddings.weight
    left = [name for name, p in module.named_parameters() if p.device.type == "meta"]
    if left:
        raise ValueError(f"checkpoint {path} left {len(left)} parameters unloaded, e.g. {left[:3]}")
    module = module.to(device).eval().requires_grad_(False)
    packed = prepack_linears(module, kernels)
    if packed:
        log.info("%d linear layers prepacked for oneDNN (--cpu-kernels onednn)", packed)
    model = HFLanguageModel(module, text_config, adapter.position_dims, decode_path)
    if model.lean is None:
        log.info("decode steps run the transformers forward: %s", model.lean_unsupported)
    return model


def eos_token_ids(path: Path, text_config: Any, tokenizer: Any) -> tuple[int, ...]:
    """End-of-sequence ids as ``generate`` uses them: generation config, then model config, then tokenizer."""
    eos: Any = None
    if (path / "generation_config.json").exists():
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    if eos is None:
        eos = getattr(text_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return tuple(int(i) for i in ids)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def load(config: LlmConfig) -> LoadedModel:
    """Resolve, fingerprint and load the language half of ``config.model``."""
    path = resolve(config.model, config.revision)
    hf_config = AutoConfig.from_pretrained(path)
    adapter = adapter_for(hf_config)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, hf_config, device)
    before = rss_mib()
    model = build_language_model(path, adapter, device, dtype, config.cpu_kernels, config.decode_path)
    millions, grown = model.parameter_count() / 1e6, rss_mib() - before
    log.info(
        "loaded the language half of %s (%s): %.1fM parameters, %s on %s, RSS +%.0f MiB",
        config.model, hf_config.architectures[0], millions, dtype, device, grown,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(path)
    adapter = adapter.for_tokenizer(tokenizer)
    chat_template = load_chat_template(path, tokenizer, config.chat_template)
    text_config = adapter.text_config
    return LoadedModel(
        path=path,
        model=model,
        adapter=adapter,
        tokenizer=tokenizer,
        chat_template=chat_template,
        eos_token_ids=eos_token_ids(path, text_config, tokenizer),
        max_positions=int(getattr(text_config, "max_position_embeddings", 0) or 0),
        fingerprint=fingerprint(path, config.model, config.revision),
    )
