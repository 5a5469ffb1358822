"""B1: embedding cache hit vs miss through the real vision service and a real Redis.

One command: ``python bench/b1_cache_hit.py --images 20`` (from the repo root, with
``PYTHONPATH=.:protos``). Model: a LLaVA shape at real size with random weights, built in code and
saved with ``save_pretrained`` (nothing is downloaded): CLIP ViT-B/16 at 224 px (LLaVA-1.5
feature select: layer -2, CLS dropped, 196 tokens) + MLP projector to hidden 576 + a
SmolLM2-135M-shaped Llama (the language half only serves the memory comparison). Test images
are 512 px JPEGs (resized by the checkpoint's CLIP processor). SigLIP-B/16 at 512 px costs
~5 s per image on this shared 2-core machine, too slow for a few-minute run.

Arms, per image, interleaved after warm-up: ``miss`` (first Encode of a new image, cache on),
``off`` (the same image through a second service with no cache: the recompute baseline) and
``hit`` (the same image again, cache on). Both services run in this process on port 0 and are
called over gRPC. Also measured: resident memory of a process holding only the vision half
(the worker) versus one holding the full HF model. Writes ``bench/results/b1.json`` and prints a
short table. Target: hit p50 <= miss p50 / 100; the encoder runs once per image.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = "b1-model.json"
SHAPE = {"vision": "clip-vit-b16-224", "tokens": 196, "projector_hidden": 576, "text": "smollm2-135m"}


def build_model(path: Path) -> Path:
    """Save the random LLaVA-shaped checkpoint into ``path`` (reused when complete)."""
    if (path / MARKER).exists() and json.loads((path / MARKER).read_text()) == SHAPE:
        return path
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16, projection_dim=512,
    )  # fmt: skip
    text = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=49151, image_seq_length=196,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    processor.save_pretrained(path)
    (path / MARKER).write_text(json.dumps(SHAPE))
    return path


def rss_probe(kind: str, model: Path) -> None:
    """(Run in a fresh subprocess) print RSS before and after loading ``kind`` as JSON."""
    import psutil
    import torch
    from transformers import LlavaForConditionalGeneration

    from vision_service.adapters import load_adapter

    process = psutil.Process()
    before = process.memory_info().rss
    if kind == "vision":
        held: Any = load_adapter(model).module
    else:
        held = LlavaForConditionalGeneration.from_pretrained(model, dtype=torch.float32)
    with torch.no_grad():  # touch every weight: lazily mapped pages count once they are used
        params = sum(int(p.numel()) for p in held.parameters() if p.float().sum() is not None)
    after = process.memory_info().rss
    print(json.dumps({"rss_before": before, "rss_after": after, "parameters": params}))


def measure_rss(model: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'protos'}"}
    for kind in ("vision", "full"):
        args = [sys.executable, __file__, "--rss-probe", kind, "--model", str(model)]
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        probe = json.loads(done.stdout.strip().splitlines()[-1])
        probe["loaded_mib"] = round((probe["rss_after"] - probe["rss_before"]) / 2**20, 1)
        probe["total_mib"] = round(probe["rss_after"] / 2**20, 1)
        out[kind] = probe
    out["worker_vs_full_loaded"] = round(out["vision"]["loaded_mib"] / out["full"]["loaded_mib"], 3)
    return out


def test_images(count: int) -> list[bytes]:
    from tandem.testing.checkpoints import make_test_image

    images = []
    for seed in range(count):
        buf = io.BytesIO()
        make_test_image(1000 + seed, (512, 512)).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    return images


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "n": len(ordered), "p50_ms": statistics.median(ordered) * 1e3, "p90_ms": pick(0.9) * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3, "min_ms": ordered[0] * 1e3,
    }  # fmt: skip


async def run_arms(model: Path, redis_url: str, count: int) -> dict[str, Any]:
    import grpc
    from vlm.v1 import vision_pb2, vision_pb2_grpc

    from tandem.serving.bootstrap import channel_options
    from vision_service.config import VisionConfig
    from vision_service.inprocess import running_vision

    base = {"model": str(model), "port": 0, "reflection": False, "max_batch": 4}
    on_config = VisionConfig(**base, redis_url=redis_url, cache_prefix="b1")
    off_config = VisionConfig(**base, redis_url="")
    images = test_images(count + 2)
    async with running_vision(on_config) as on, running_vision(off_config) as off:
        channels = {name: grpc.aio.insecure_channel(v.address, options=channel_options(64 << 20))
                    for name, v in (("on", on), ("off", off))}  # fmt: skip
        stubs = {name: vision_pb2_grpc.VisionServiceStub(c) for name, c in channels.items()}

        async def call(service: str, data: bytes) -> tuple[float, bool]:
            began = time.perf_counter()
            reply = await stubs[service].Encode(
                vision_pb2.EncodeRequest(images=[vision_pb2.ImageInput(data=data)])
            )
            return time.perf_counter() - began, reply.images[0].cache_hit

        for data in images[:2]:  # warm-up: both services, miss and hit paths
            await call("on", data), await call("off", data), await call("on", data)
        before = on.service.metrics.get("encoded_images")
        samples: dict[str, list[float]] = {"miss": [], "off": [], "hit": []}
        for i, data in enumerate(images[2:]):
            order = [("miss", "on"), ("off", "off")] if i % 2 == 0 else [("off", "off"), ("miss", "on")]
            for arm, service in [*order, ("hit", "on")]:
                seconds, hit = await call(service, data)
                if hit != (arm == "hit"):
                    raise RuntimeError(f"{arm} call {i} reported cache_hit={hit}")
                samples[arm].append(seconds)
        encodes = on.service.metrics.get("encoded_images") - before
        for channel in channels.values():
            await channel.close()
    return {
        "arms": {arm: summary(s) for arm, s in samples.items()},
        "encoder_runs_per_image": encodes / count,
    }


def versions() -> dict[str, str]:
    import grpc
    import redis
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "grpcio": grpc.__version__,
            "redis-py": redis.__version__}  # fmt: skip


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "device": "cpu",
            "load_average": os.getloadavg(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}  # fmt: skip


def report(result: dict[str, Any]) -> None:
    arms = result["arms"]
    shape = result["model_shape"]
    print(f"B1 cache hit vs miss ({result['images']} images, {shape['vision']} -> {shape['tokens']}x576)")
    print(f"{'arm':<6}{'n':>4}{'p50 ms':>11}{'p90 ms':>11}{'mean ms':>11}")
    for arm in ("miss", "off", "hit"):
        a = arms[arm]
        print(f"{arm:<6}{a['n']:>4}{a['p50_ms']:>11.2f}{a['p90_ms']:>11.2f}{a['mean_ms']:>11.2f}")
    r = result["ratios"]
    print(f"hit/miss p50 = 1/{1 / r['hit_over_miss_p50']:.0f}   miss/off p50 = {r['miss_over_off_p50']:.3f}"
          f"   encoder runs per image = {result['encoder_runs_per_image']:.2f}")  # fmt: skip
    m = result["memory"]
    print(f"RSS loaded: worker {m['vision']['loaded_mib']} MiB vs full model {m['full']['loaded_mib']} MiB"
          f" ({m['worker_vs_full_loaded']:.2f}x)   target met: {result['target_met']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20, help="distinct images per arm")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-bench/b1-llava-clip224"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "b1.json")
    parser.add_argument("--rss-probe", choices=["vision", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "protos")]  # runnable without PYTHONPATH
    # Both services' encoder threads live in this process, each with its own OpenMP team; passive
    # waiting keeps the idle team from spinning on the cores the other one is using.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.rss_probe:
        rss_probe(args.rss_probe, args.model)
        return
    from tandem.redis_local import LocalRedis

    model = build_model(args.workdir)
    memory = measure_rss(model)
    with LocalRedis() as redis_server:
        measured = asyncio.run(run_arms(model, redis_server.url, args.images))
    arms = measured["arms"]
    ratios = {
        "hit_over_miss_p50": arms["hit"]["p50_ms"] / arms["miss"]["p50_ms"],
        "hit_over_off_p50": arms["hit"]["p50_ms"] / arms["off"]["p50_ms"],
        "miss_over_off_p50": arms["miss"]["p50_ms"] / arms["off"]["p50_ms"],
    }
    met = ratios["hit_over_miss_p50"] <= 0.01 and measured["encoder_runs_per_image"] == 1.0
    result = {"benchmark": "B1", "images": args.images, "model_shape": SHAPE, **measured, "ratios": ratios,
              "target": "hit p50 <= miss p50 / 100; encoder runs once per image", "target_met": met,
              "memory": memory, "machine": machine(), "versions": versions()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    report(result)


if __name__ == "__main__":
    main()
