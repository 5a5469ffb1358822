"""B5: decode scaling -- 1/4/16 concurrent streams through the Engine vs sequential HF ``generate``.

Run: ``PYTHONPATH=.:protos python bench/b5_decode_scaling.py`` (writes ``bench/results/b5.json``;
``--blocks 2 --baseline-requests 1`` for a quicker run).

Model: the SmolLM2-135M shape (LlamaConfig hidden 576, 30 layers, 9/3 heads, intermediate 1536,
vocab 49152, tied embeddings) with random weights, in bf16 (``--dtype float32`` to compare).
Workload: 64-token prompts, 32 new tokens (EOS never ends a stream early).

Arms, interleaved in blocks after a warm-up:
- ``hf_sequential``: ``model.generate`` at batch 1, one request after another (the baseline);
- ``engine_k`` (k = 1, 4, 16): k requests submitted at once to one ``Engine`` (max batch 16).
Tokens/s = generated tokens / wall time from submission to the last token (prefill included).

Also reported: the engine's decode-only throughput (from its per-step timing) as a percentage of
the memory-bandwidth bound = batch * bandwidth / (weight bytes + KV bytes read per step).
Targets: >= 3x the baseline's tokens/s at 4 streams, >= 8x at 16.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path[:0] = [
    str(Path(__file__).resolve().parent.parent),
    str(Path(__file__).resolve().parent.parent / "protos"),
]

from bench.common import print_table, write_result  # noqa: E402
from llm_service.engine import Engine, EngineConfig, SamplingConfig  # noqa: E402
from tandem.testing.engine import CausalLMAdapter, collect, smollm2_135m_shape, text_request  # noqa: E402

PROMPT, NEW = 64, 32
STREAMS = (1, 4, 16)
TARGETS = {4: 3.0, 16: 8.0}


def word_tokenizer(vocab_size: int) -> Any:
    """A tokenizer with the model's vocabulary size (one word per id), so detokenising costs what it would."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def random_prompt(length: int, generator: torch.Generator, vocab: int = 49152) -> list[int]:
    return torch.randint(3, vocab, (length,), generator=generator).tolist()


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of distinct parameters (tied embeddings counted once): what a decode step reads."""
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(seen.values())


def kv_bytes(model: Any, batch: int, length: float) -> float:
    """Bytes of K and V read by one decode step at ``batch`` rows of ``length`` cached positions."""
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * batch * c.num_key_value_heads * length * head_dim * model.dtype.itemsize


def hf_generate(model: Any, prompt: list[int], new: int) -> int:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False, max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
        )  # fmt: skip
    return out.shape[1] - len(prompt)


async def engine_burst(engine: Engine, prompts: list[list[int]], new: int) -> tuple[float, int, float, int]:
    """Submit all prompts at once; (wall seconds, tokens, decode seconds, decode steps) of the burst."""
    before = engine.metrics.snapshot()
    sampling = SamplingConfig(max_new_tokens=new)
    requests = [text_request(engine.model, p, sampling, request_id=f"b{i}") for i, p in enumerate(prompts)]
    started = time.perf_counter()
    results = await asyncio.gather(*(collect(engine, r) for r in requests))
    wall = time.perf_counter() - started
    after = engine.metrics.snapshot()
    steps = int(after["engine_decode_seconds_count"] - before.get("engine_decode_seconds_count", 0))
    decode = after["engine_decode_seconds_sum"] - before.get("engine_decode_seconds_sum", 0.0)
    return wall, sum(len(r.token_ids) for r in results), decode, steps


async def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = smollm2_135m_shape(dtype)
    engine = Engine(CausalLMAdapter(model), word_tokenizer(49152), EngineConfig(context_length=1024), [])
    engine.start()
    gen = torch.Generator().manual_seed(1)
    try:
        hf_generate(model, random_prompt(PROMPT, gen), 4)
        await engine_burst(engine, [random_prompt(PROMPT, gen) for _ in range(4)], 4)
        arms: dict[str, list[dict[str, float]]] = {
            "hf_sequential": [],
            **{f"engine_{k}": [] for k in STREAMS},
        }
        for block in range(args.blocks):
            order = ["hf_sequential", *(f"engine_{k}" for k in STREAMS)]
            for name in order if block % 2 == 0 else reversed(order):
                if name == "hf_sequential":
                    started, tokens = time.perf_counter(), 0
                    for _ in range(args.baseline_requests):
                        tokens += hf_generate(model, random_prompt(PROMPT, gen), NEW)
                    arms[name].append({"seconds": time.perf_counter() - started, "tokens": tokens})
                else:
                    k = int(name.split("_")[1])
                    wall, tokens, decode, steps = await engine_burst(
                        engine, [random_prompt(PROMPT, gen) for _ in range(k)], NEW
                    )
                    arms[name].append({"seconds": wall, "tokens": tokens, "decode_s": decode, "steps": steps})
                print(f"block {block} {name}: {arms[name][-1]}", flush=True)
    finally:
        engine.stop()
    return summarise_arms(model, arms, args)


def summarise_arms(
    model: Any, arms: dict[str, list[dict[str, float]]], args: argparse.Namespace
) -> dict[str, Any]:
    bandwidth = args.bandwidth_gbs * 1e9
    weights = model_bytes(model)
    base = sum(b["tokens"] for b in arms["hf_sequential"]) / sum(b["seconds"] for b in arms["hf_sequential"])
    out: dict[str, Any] = {"baseline_tokens_per_s": base, "arms": arms, "streams": {}}
    for k in STREAMS:
        blocks = arms[f"engine_{k}"]
        rate = sum(b["tokens"] for b in blocks) / sum(b["seconds"] for b in blocks)
        step = sum(b["decode_s"] for b in blocks) / max(1, sum(b["steps"] for b in blocks))
        bound = k * bandwidth / (weights + kv_bytes(model, k, PROMPT + NEW / 2))
        ratios = [(b["tokens"] / b["seconds"]) / base for b in blocks]
        out["streams"][k] = {
            "tokens_per_s": rate, "ratio": rate / base, "ratio_per_block": ratios,
            "ratio_p50": statistics.median(ratios), "decode_step_s": step,
            "decode_tokens_per_s": k / step, "bound_tokens_per_s": bound,
            "pct_of_bound": 100 * k / step / bound,
            "target": TARGETS.get(k), "met": rate / base >= TARGETS[k] if k in TARGETS else None,
        }  # fmt: skip
    out["baseline_pct_of_bound"] = 100 * base / (bandwidth / (weights + kv_bytes(model, 1, PROMPT + NEW / 2)))
    out["weight_bytes"] = weights
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=3, help="interleaved blocks of every arm")
    parser.add_argument("--baseline-requests", type=int, default=2, help="sequential HF requests per block")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--bandwidth-gbs", type=float, default=15.0, help="this machine's memory bandwidth")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    payload = {
        "workload": {"prompt": PROMPT, "new_tokens": NEW, "dtype": args.dtype, "model": "smollm2-135m shape"}
    }
    path = write_result("b5", payload | {"bandwidth_gbs": args.bandwidth_gbs, **result})
    rows = [["hf generate, batch 1", f"{result['baseline_tokens_per_s']:.1f}", "1.00x", "", "", "",
             f"{result['baseline_pct_of_bound']:.0f}%"]]  # fmt: skip
    for k, s in result["streams"].items():
        target = f">= {s['target']}x: {'met' if s['met'] else 'MISSED'}" if s["target"] else ""
        rows.append([
            f"engine, {k} streams", f"{s['tokens_per_s']:.1f}", f"{s['ratio']:.2f}x", target,
            f"{s['decode_step_s'] * 1e3:.1f} ms", f"{s['decode_tokens_per_s']:.0f}",
            f"{s['pct_of_bound']:.0f}%",
        ])  # fmt: skip
    print_table(
        ["arm", "tok/s (e2e)", "ratio", "target", "decode step", "decode tok/s", "% of bw bound"], rows
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
