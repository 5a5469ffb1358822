"""B3: embedding record encode/decode vs a ``torch.save``/``torch.load`` round trip.

Run: ``PYTHONPATH=.:protos python bench/b3_serialisation.py`` (writes ``bench/results/b3.json``).

Shapes: 576x4096 (LLaVA-1.5-7B, one 336 px image) and 1369x1536 (Qwen2-VL-2B-like, a large
image), bf16. Arms, interleaved after warm-up:

- ``record_encode``: ``record.make_header`` + ``record.encode`` (the bytes written to Redis);
- ``record_decode``: ``record.split`` + ``record.validate`` + ``record.to_tensor`` (zero copy);
- ``torch_save`` / ``torch_load``: the baseline through an in-memory file (``torch.load`` reads
  only bytes this benchmark just wrote; product code never calls it).

Targets: decode <= 10 us; the record round trip >= 5x faster than the torch.save round trip.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path[:0] = [
    str(Path(__file__).resolve().parent.parent),
    str(Path(__file__).resolve().parent.parent / "protos"),
]

from bench.common import format_seconds, interleaved, print_table, summarise, write_result  # noqa: E402
from tandem.embeddings import record  # noqa: E402

SHAPES = ((576, 4096), (1369, 1536))
FINGERPRINT = "0123456789abcdef" * 2
IMAGE_ID = "ab" * 32
DECODE_TARGET_SECONDS = 10e-6
ROUND_TRIP_TARGET_RATIO = 5.0


@dataclass(frozen=True)
class Arms:
    """The timed callables for one tensor, sharing one encoded value and one saved file."""

    calls: dict[str, Callable[[], object]]
    value_bytes: int
    saved_bytes: int


def make_arms(features: torch.Tensor) -> Arms:
    expected = record.Expected(FINGERPRINT, features.shape[1], IMAGE_ID, features.shape[0])
    header, raw = record.make_header(fingerprint=FINGERPRINT, image_id=IMAGE_ID, tensor=features)
    value = record.encode(header, raw)
    buffer = io.BytesIO()
    torch.save(features, buffer)
    saved = buffer.getvalue()

    def record_encode() -> bytes:
        head, data = record.make_header(fingerprint=FINGERPRINT, image_id=IMAGE_ID, tensor=features)
        return record.encode(head, data)

    def record_decode() -> torch.Tensor:
        head, data = record.split(value)
        record.validate(head, len(data), expected)
        return record.to_tensor(head, data)

    def torch_save() -> bytes:
        out = io.BytesIO()
        torch.save(features, out)
        return out.getvalue()

    def torch_load() -> torch.Tensor:
        return torch.load(io.BytesIO(saved), weights_only=True)

    if not torch.equal(record_decode(), features) or not torch.equal(torch_load(), features):
        raise RuntimeError("a round trip changed the tensor")
    calls: dict[str, Callable[[], object]] = {
        "record_encode": record_encode,
        "record_decode": record_decode,
        "torch_save": torch_save,
        "torch_load": torch_load,
    }
    return Arms(calls, len(value), len(saved))


def measure(shape: tuple[int, int], blocks: int, per_block: int) -> dict[str, Any]:
    """Both arms for one shape, with their p50 ratios and whether the targets are met."""
    features = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    arms = make_arms(features)
    samples = interleaved(arms.calls, blocks=blocks, per_block=per_block, warmup=10)
    stats = {name: summarise(values) for name, values in samples.items()}
    ours = stats["record_encode"]["p50"] + stats["record_decode"]["p50"]
    theirs = stats["torch_save"]["p50"] + stats["torch_load"]["p50"]
    return {
        "shape": list(shape),
        "dtype": "bfloat16",
        "value_bytes": arms.value_bytes,
        "torch_save_bytes": arms.saved_bytes,
        "arms": stats,
        "round_trip_p50": {"record": ours, "torch_save": theirs},
        "round_trip_ratio": theirs / ours,
        "decode_ratio": stats["torch_load"]["p50"] / stats["record_decode"]["p50"],
        "decode_meets_target": stats["record_decode"]["p50"] <= DECODE_TARGET_SECONDS,
        "round_trip_meets_target": theirs / ours >= ROUND_TRIP_TARGET_RATIO,
    }


def print_results(results: list[dict[str, Any]]) -> None:
    names = list(results[0]["arms"])
    rows = [
        [
            "x".join(map(str, result["shape"])),
            *(
                f"{format_seconds(result['arms'][n]['p50'])} / {format_seconds(result['arms'][n]['p90'])}"
                for n in names
            ),
            f"{result['round_trip_ratio']:.1f}x",
            f"{result['decode_ratio']:.0f}x",
        ]
        for result in results
    ]
    print_table(["shape (bf16)", *(f"{n} p50/p90" for n in names), "round trip", "decode"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=20, help="interleaved blocks per arm (default 20)")
    parser.add_argument("--per-block", type=int, default=10, help="calls per block (default 10)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [measure(shape, args.blocks, args.per_block) for shape in SHAPES]
    targets = {"decode_p50_seconds": DECODE_TARGET_SECONDS, "round_trip_ratio": ROUND_TRIP_TARGET_RATIO}
    path = write_result("b3", {"targets": targets, "results": results})
    print_results(results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
