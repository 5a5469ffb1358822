"""B6: continuous batching under Poisson arrivals vs sequential and static batches of 8.

Run: ``PYTHONPATH=.:protos python bench/b6_continuous_batching.py`` (writes ``bench/results/b6.json``;
about 5 minutes on the shared 2-core machine, the sequential arm most of it; ``--requests 48``
keeps it under 4).

Model: the SmolLM2-135M shape with random weights in bf16 (see B5). Workload: ``--requests``
(64) requests, prompts uniform in 16-128 tokens, outputs uniform in 8-64 tokens (exact lengths:
EOS never ends one early), Poisson arrivals at ``--load`` (0.7) of the engine's capacity, where
capacity is measured first as the engine's requests/s on a burst of the same requests (all
arriving at once).
The same arrival schedule is replayed against each arm:

- ``continuous``: the ``Engine`` (``--max-batch``, 16): a request joins the running batch at the
  next step;
- ``static8``: when the server is free, up to 8 waiting requests run as one left-padded HF
  ``generate`` batch until the longest is done (nothing joins a running batch);
- ``sequential``: HF ``generate`` at batch 1, first come first served.

Throughput = useful generated tokens / (last completion - first arrival); TTFT = first token -
arrival (queueing included). Targets: continuous >= 3.5x sequential and >= 1.1x static
throughput; continuous TTFT p99 <= 0.5x static's.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

sys.path[:0] = [
    str(Path(__file__).resolve().parent.parent),
    str(Path(__file__).resolve().parent.parent / "protos"),
]

from bench.b5_decode_scaling import word_tokenizer  # noqa: E402
from bench.common import percentile, print_table, write_result  # noqa: E402
from llm_service.engine import Engine, EngineConfig, SamplingConfig  # noqa: E402
from tandem.testing.engine import CausalLMAdapter, smollm2_135m_shape, text_request  # noqa: E402

STATIC_BATCH = 8
TARGETS = {"vs_sequential": 3.5, "vs_static": 1.1, "ttft_p99_vs_static": 0.5}


@dataclass(frozen=True)
class Job:
    prompt: list[int]
    new_tokens: int
    arrival: float  # seconds after the start of the run


@dataclass
class Outcome:
    ttft: list[float]
    tokens: int
    span: float  # first arrival -> last completion

    def summary(self) -> dict[str, float]:
        return {
            "tokens_per_s": self.tokens / self.span, "span_s": self.span, "tokens": self.tokens,
            "ttft_p50": percentile(self.ttft, 50), "ttft_p90": percentile(self.ttft, 90),
            "ttft_p99": percentile(self.ttft, 99), "ttft_mean": sum(self.ttft) / len(self.ttft),
        }  # fmt: skip


def workload(n: int, seed: int) -> list[Job]:
    """``n`` requests (prompt 16-128 tokens, output 8-64 tokens), all arriving at 0."""
    rng = random.Random(seed)
    return [
        Job([rng.randrange(3, 49152) for _ in range(rng.randint(16, 128))], rng.randint(8, 64), 0.0)
        for _ in range(n)
    ]


def with_arrivals(jobs: list[Job], rate: float, seed: int) -> list[Job]:
    """The same requests arriving as a Poisson process of ``rate`` per second (the first at 0).

    The exponential gaps are rescaled so that their mean is exactly 1/rate: the offered load is
    the one asked for, not a random draw around it.
    """
    rng = random.Random(seed)
    gaps = [rng.expovariate(rate) for _ in jobs[1:]]
    scale = len(gaps) / rate / sum(gaps) if gaps else 1.0
    clock, out = 0.0, [Job(jobs[0].prompt, jobs[0].new_tokens, 0.0)] if jobs else []
    for job, gap in zip(jobs[1:], gaps, strict=True):
        clock += gap * scale
        out.append(Job(job.prompt, job.new_tokens, clock))
    return out


class _FirstToken(BaseStreamer):
    """Records when ``generate`` produced its first new token (its second ``put``)."""

    def __init__(self) -> None:
        self.puts, self.at = 0, 0.0

    def put(self, value: Any) -> None:
        self.puts += 1
        if self.puts == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def hf_batch(model: Any, jobs: list[Job]) -> tuple[float, float]:
    """One left-padded ``generate`` over ``jobs``; (first token time, end time)."""
    width, new = max(len(j.prompt) for j in jobs), max(j.new_tokens for j in jobs)
    ids = torch.tensor([[0] * (width - len(j.prompt)) + j.prompt for j in jobs])
    mask = torch.tensor([[0] * (width - len(j.prompt)) + [1] * len(j.prompt) for j in jobs])
    streamer = _FirstToken()
    with torch.inference_mode():
        model.generate(
            ids, attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new,
            pad_token_id=0, streamer=streamer,
        )  # fmt: skip
    return streamer.at, time.perf_counter()


def run_served(model: Any, jobs: list[Job], batch: int) -> Outcome:
    """Replay ``jobs`` against a server that runs up to ``batch`` waiting requests to completion."""
    start, ttft, done, last = time.perf_counter(), [], 0, 0.0
    while done < len(jobs):
        now = time.perf_counter() - start
        if jobs[done].arrival > now:
            time.sleep(jobs[done].arrival - now)
            now = time.perf_counter() - start
        group = [j for j in jobs[done : done + batch] if j.arrival <= now]
        first, end = hf_batch(model, group)
        ttft += [first - start - j.arrival for j in group]
        done, last = done + len(group), end - start
    return Outcome(ttft, sum(j.new_tokens for j in jobs), last - jobs[0].arrival)


async def run_continuous(engine: Engine, jobs: list[Job]) -> Outcome:
    start = time.perf_counter()

    async def one(i: int, job: Job) -> tuple[float, float]:
        await asyncio.sleep(max(0.0, job.arrival - (time.perf_counter() - start)))
        sampling = SamplingConfig(max_new_tokens=job.new_tokens)
        first = 0.0
        async for _ in engine.generate(text_request(engine.model, job.prompt, sampling, f"j{i}")):
            first = first or time.perf_counter()
        return first - start - job.arrival, time.perf_counter() - start

    results = await asyncio.gather(*(one(i, j) for i, j in enumerate(jobs)))
    return Outcome([r[0] for r in results], sum(j.new_tokens for j in jobs), max(r[1] for r in results))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    model = smollm2_135m_shape(getattr(torch, args.dtype))
    config = EngineConfig(context_length=1024, max_batch_size=args.max_batch, max_queue=256)
    engine = Engine(CausalLMAdapter(model), word_tokenizer(49152), config, [])
    engine.start()
    try:
        hf_batch(model, workload(2, seed=99))
        await run_continuous(engine, workload(4, seed=98))
        jobs = workload(args.requests, seed=args.seed)
        calibration = jobs[: args.calibration or None]
        burst = await run_continuous(engine, calibration)
        capacity, burst_tokens = len(calibration) / burst.span, burst.tokens / burst.span
        rate = args.rate or args.load * capacity
        print(f"capacity {capacity:.2f} req/s ({burst_tokens:.1f} tok/s); arrivals {rate:.2f} req/s")
        jobs = with_arrivals(jobs, rate, seed=args.seed)
        arms: dict[str, list[dict[str, float]]] = {"continuous": [], "static8": [], "sequential": []}
        for block in range(args.blocks):
            order = list(arms) if block % 2 == 0 else list(reversed(arms))
            for name in order:
                if name == "continuous":
                    outcome = await run_continuous(engine, jobs)
                else:
                    outcome = run_served(model, jobs, STATIC_BATCH if name == "static8" else 1)
                arms[name].append(outcome.summary())
                print(f"block {block} {name}: {arms[name][-1]}", flush=True)
    finally:
        engine.stop()
    return {
        "capacity_req_per_s": capacity, "capacity_tokens_per_s": burst_tokens, "arrival_rate_req_per_s": rate,
        "arms": arms, **ratios(arms),
    }  # fmt: skip


def ratios(arms: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    def mean(name: str, key: str) -> float:
        return sum(b[key] for b in arms[name]) / len(arms[name])

    out = {
        "vs_sequential": mean("continuous", "tokens_per_s") / mean("sequential", "tokens_per_s"),
        "vs_static": mean("continuous", "tokens_per_s") / mean("static8", "tokens_per_s"),
        "ttft_p50_vs_static": mean("continuous", "ttft_p50") / mean("static8", "ttft_p50"),
        "ttft_p99_vs_static": mean("continuous", "ttft_p99") / mean("static8", "ttft_p99"),
    }
    met = {
        "vs_sequential": out["vs_sequential"] >= TARGETS["vs_sequential"],
        "vs_static": out["vs_static"] >= TARGETS["vs_static"],
        "ttft_p99_vs_static": out["ttft_p99_vs_static"] <= TARGETS["ttft_p99_vs_static"],
    }
    return {"ratios": out, "targets": TARGETS, "met": met}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=64, help="requests per arm")
    parser.add_argument("--load", type=float, default=0.7, help="arrival rate as a fraction of capacity")
    parser.add_argument("--rate", type=float, default=0.0, help="arrival rate in req/s (overrides --load)")
    parser.add_argument(
        "--calibration",
        type=int,
        default=0,
        help="burst that measures capacity: the first N requests (0: all)",
    )
    parser.add_argument("--blocks", type=int, default=1, help="interleaved blocks of the three arms")
    parser.add_argument("--max-batch", type=int, default=16, help="the engine's max_batch_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    result = asyncio.run(run(args))
    workload_info = {
        "requests": args.requests, "prompt": [16, 128], "new_tokens": [8, 64], "load": args.load,
        "engine_max_batch": args.max_batch, "static_batch": STATIC_BATCH,
    }  # fmt: skip
    path = write_result("b6", {"workload": workload_info | {"dtype": args.dtype}, **result})
    rows = []
    for name, blocks in result["arms"].items():
        s = blocks[-1]
        rows.append([name, f"{s['tokens_per_s']:.1f}", f"{s['ttft_p50']:.2f} s", f"{s['ttft_p90']:.2f} s",
                     f"{s['ttft_p99']:.2f} s", f"{s['span_s']:.1f} s"])  # fmt: skip
    print_table(["arm", "tok/s", "TTFT p50", "TTFT p90", "TTFT p99", "span"], rows)
    r, met = result["ratios"], result["met"]
    print(f"continuous vs sequential {r['vs_sequential']:.2f}x (>= 3.5x: {met['vs_sequential']})")
    print(f"continuous vs static8 {r['vs_static']:.2f}x (>= 1.1x: {met['vs_static']})")
    print(
        f"TTFT p99 continuous / static8 {r['ttft_p99_vs_static']:.2f}x (<= 0.5x: {met['ttft_p99_vs_static']})"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
