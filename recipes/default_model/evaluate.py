"""Score the default model on held-out synthetic questions, in-process and through a running Tandem.

    python -m recipes.default_model.evaluate [--model DIR] [--n 200] [--address HOST:PORT | --in-process-only]

``--n`` questions of each kind (``data.KINDS``) are drawn with ``--seed`` (training uses 0 and
1, so the default 1234 is unseen data). In-process, the checkpoint answers with plain Hugging
Face ``generate()`` (greedy, float32 as the CPU services run it). Then the same questions go
through the whole running system -- the gateway's public gRPC ``Generate`` (image bytes + text
parts), the vision service, Redis and the language service -- and the two runs are compared
answer by answer: by default the command starts that system itself with ``tandem up`` (embedded
Redis, free ports) and stops it afterwards; ``--address`` asks a gateway that is already running
instead. The exit status is 1 when the two runs' answers differ. A follow-up is asked as a
client would: the first turn's answer comes from the model itself and goes back as history
with the text-only second turn, which is the one scored. An answer is right when it equals the
reference exactly (after stripping spaces). Prints a table, then the JSON report (or writes it to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from recipes.default_model.data import KINDS, Message, Sample, eval_set
from tandem.default_model import CHECKPOINT

EVAL_SEED = 1234
MAX_NEW_TOKENS = 32
Request = tuple[list[Message], list[Image.Image]]
Answerer = Callable[[Sequence[Request]], list[str]]


class InProcess:
    """Greedy ``generate()`` with the checkpoint loaded by ``AutoModelForImageTextToText``."""

    def __init__(self, path: Path, batch_size: int = 32):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
        self.batch_size = batch_size

    def __call__(self, requests: Sequence[Request]) -> list[str]:
        answers: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            answers += self._batch(requests[start : start + self.batch_size])
        return answers

    @torch.inference_mode()
    def _batch(self, requests: Sequence[Request]) -> list[str]:
        texts = [self.processor.apply_chat_template(m, add_generation_prompt=True) for m, _ in requests]
        images = [image for _, request_images in requests for image in request_images]
        inputs = self.processor(images=images or None, text=texts, padding=True, return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True)]


def answer_all(samples: Sequence[Sample], answer: Answerer) -> list[str]:
    """The model's answer to each sample's last question (follow-ups: its own first answer as history)."""
    first = [s.messages[:1] if s.kind == "followup" else s.prompt for s in samples]
    answers = answer([(messages, s.images) for messages, s in zip(first, samples, strict=True)])
    follow = [i for i, s in enumerate(samples) if s.kind == "followup"]
    second = []
    for i in follow:
        messages = samples[i].messages
        reply = {"role": "assistant", "content": [{"type": "text", "text": answers[i]}]}
        second.append(([messages[0], reply, messages[2]], samples[i].images))
    for i, text in zip(follow, answer(second), strict=True):
        answers[i] = text
    return answers


def score(samples: Sequence[Sample], answers: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Exact-match accuracy per kind, plus ``all``."""
    table: dict[str, dict[str, Any]] = {}
    for kind in [*dict.fromkeys(s.kind for s in samples), "all"]:
        pairs = [(s, a) for s, a in zip(samples, answers, strict=True) if kind in ("all", s.kind)]
        right = sum(a == s.answer for s, a in pairs)
        table[kind] = {"n": len(pairs), "correct": right, "accuracy": round(right / max(1, len(pairs)), 4)}
    return table


def mistakes(samples: Sequence[Sample], answers: Sequence[str], limit: int = 10) -> list[dict[str, str]]:
    wrong = [(s, a) for s, a in zip(samples, answers, strict=True) if a != s.answer]
    return [{"kind": s.kind, "expected": s.answer, "got": a} for s, a in wrong[:limit]]


def evaluate(
    model: Path, n: int, seed: int = EVAL_SEED, address: str | None = None, kinds: Sequence[str] = KINDS
) -> dict[str, Any]:
    """Run the in-process evaluation (and the gateway one when ``address`` is set); the JSON report."""
    samples = eval_set(seed, tuple(kinds), n)
    say(f"in-process: {len(samples)} questions ({n} per kind) with Hugging Face generate() ...")
    started = time.monotonic()
    local = answer_all(samples, InProcess(model))
    say(f"in-process: done in {time.monotonic() - started:.0f} s")
    report: dict[str, Any] = {
        "model": str(model),
        "seed": seed,
        "per_kind": n,
        "in_process": {"scores": score(samples, local), "seconds": round(time.monotonic() - started, 1)},
        "mistakes": mistakes(samples, local),
    }
    if address:
        from recipes.default_model.remote import GatewayAnswerer

        say(f"gateway {address}: the same {len(samples)} questions through gRPC Generate ...")
        started = time.monotonic()
        with GatewayAnswerer(address) as gateway:
            remote = answer_all(samples, gateway)
        say(f"gateway: done in {time.monotonic() - started:.0f} s")
        agree = sum(a == b for a, b in zip(local, remote, strict=True))
        report["disagreements"] = [
            {"kind": s.kind, "in_process": a, "gateway": b}
            for s, a, b in zip(samples, local, remote, strict=True)
            if a != b
        ][:10]
        report["gateway"] = {
            "address": address,
            "scores": score(samples, remote),
            "seconds": round(time.monotonic() - started, 1),
            "agreement": round(agree / len(samples), 4),
        }
    return report


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def format_table(report: dict[str, Any]) -> str:
    """A short text table: accuracy per kind, in-process and (if run) through the gateway."""
    local = report["in_process"]["scores"]
    remote = report.get("gateway", {}).get("scores")
    lines = [f"{'kind':<10} {'n':>5} {'in-process':>11}" + (f" {'gateway':>9}" if remote else "")]
    for kind, row in local.items():
        line = f"{kind:<10} {row['n']:>5} {row['accuracy']:>11.1%}"
        lines.append(line + (f" {remote[kind]['accuracy']:>9.1%}" if remote else ""))
    if remote:
        lines.append(f"answers identical in-process vs gateway: {report['gateway']['agreement']:.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.default_model.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, default=CHECKPOINT, help="checkpoint folder (default: the shipped one)"
    )
    parser.add_argument("--n", type=int, default=200, help="questions per kind (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="data seed (default: %(default)s)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--address", help="ask the gateway running at HOST:PORT instead of starting one")
    where.add_argument(
        "--in-process-only", action="store_true", help="only score in-process (no Tandem services)"
    )
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="question kinds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write the JSON report here instead of stdout")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.address or args.in_process_only:
        report = evaluate(args.model, args.n, args.seed, args.address, args.kinds)
    else:
        from recipes.default_model.system import running_tandem

        print(f"starting Tandem (tandem up --model {args.model}) ...", file=sys.stderr, flush=True)
        with running_tandem(args.model) as address:
            report = evaluate(args.model, args.n, args.seed, address, args.kinds)
    print(format_table(report), file=sys.stderr if args.json is None else sys.stdout)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    if "gateway" in report and report["gateway"]["agreement"] < 1.0:
        print("in-process and gateway answers differ", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
