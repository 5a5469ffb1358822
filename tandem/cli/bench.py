"""``tandem bench``: measure a serving system the way ``vllm bench serve`` does.

- ``tandem bench serve``: a seeded workload against any OpenAI-compatible server (Tandem's
  gateway, ``vllm serve``, ...): TTFT, TPOT, ITL, end-to-end latency, throughput, goodput; with
  ``--metrics-url`` (Tandem) also the server's time per request in each stage (B4's breakdown);
- ``tandem bench hf``: the same workload in-process with Hugging Face ``generate()`` (baseline);
- ``tandem bench compare A.json B.json``: two runs side by side with the ratio B / A;
- ``tandem bench overhead``: B10, the latency a text-only request gains through the gateway (gRPC
  and OpenAI HTTP) over the language worker in-process, interleaved, with the added ms at p50;
- ``tandem bench checkpoint``: a random-weight checkpoint at a published shape, for benchmarks.

Each run writes one JSON file (``--result-dir``) and prints a short table; the progress bar goes
to stderr. bench/README.md has the commands of the standard workloads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tandem.bench.dataset import Conversation, DatasetConfig
    from tandem.bench.metrics import RequestRecord, Slo
    from tandem.bench.runner import ServeOutcome
    from tandem.bench.scrape import StageProbe


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "bench",
        help="serving benchmarks (serve, hf, compare, overhead) and benchmark checkpoints",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="bench_command",
        metavar="<bench command>",
        required=True,
        help="what to run (each has its own --help)",
    )
    _add_serve(sub)
    _add_hf(sub)
    _add_compare(sub)
    _add_overhead(sub)
    _add_checkpoint(sub)


def _add_serve(sub: Any) -> None:
    parser = sub.add_parser(
        "serve",
        help="run a workload against an OpenAI-compatible server",
        description=(
            "Send a seeded synthetic workload to an OpenAI-compatible server (streaming chat "
            "completions) and report TTFT, TPOT, ITL, end-to-end latency, throughput and goodput. "
            "--num-prompts conversations of --turns turns each start at Poisson arrivals "
            "(--request-rate) with at most --max-concurrency running; warm-up conversations run "
            "first and are not counted."
        ),
    )
    _add_server(parser)
    _add_load(parser)
    _add_workload(parser)
    parser.set_defaults(run=run_serve)


def _add_server(parser: argparse.ArgumentParser) -> None:
    """``serve``: which server, which model, which key."""
    parser.add_argument(
        "--base-url",
        action="append",
        help="the server's OpenAI base URL; /v1 is added when the URL has no path (default: "
        "http://127.0.0.1:8000/v1). Given more than once: replicas of one model, conversation i "
        "goes to URL i mod N (round robin in the client; a conversation stays on its replica)",
    )
    parser.add_argument("--model", help="model id to request (default: the first one GET /v1/models lists)")
    parser.add_argument(
        "--api-key", help="sent as `Authorization: Bearer KEY` (default: $OPENAI_API_KEY, else none)"
    )


def _add_load(parser: argparse.ArgumentParser) -> None:
    """``serve``: how the conversations reach the server, and what is scraped from it."""
    parser.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="conversations started per second, as a Poisson process; inf = all at once (default: inf)",
    )
    parser.add_argument(
        "--max-concurrency", type=int, help="at most this many conversations in flight (default: no limit)"
    )
    parser.add_argument(
        "--sessions",
        action="store_true",
        help="multi-turn through Tandem's session extension (POST /v1/sessions, session_id): each turn "
        "sends only its new message; default: every turn re-sends the whole history",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=600.0, help="seconds without a byte before a request fails"
    )
    parser.add_argument(
        "--metrics-url",
        action="append",
        default=[],
        metavar="URL",
        help="a Prometheus /metrics URL of the server; repeat it for each service, as `tandem up` prints "
        "them (`metrics <service> <url>`). Scraped after the warm-up and at the end: the result's "
        "server_stages has every tandem_*_seconds histogram's time per request, and the B4 stages' sum "
        "against the mean TTFT. An unreachable URL stops the run before it starts",
    )


def _add_hf(sub: Any) -> None:
    from tandem.bench.hf_arm import DTYPES

    parser = sub.add_parser(
        "hf",
        help="run the same workload in-process with Hugging Face generate()",
        description=(
            "Run the workload of `tandem bench serve` in this process with transformers' generate() "
            "on a checkpoint: one request at a time, batch 1, greedy. A streamer stamps each token: "
            "TTFT counts image decoding, the chat template and the processor too, as on a server. "
            "Multi-turn conversations re-send the history."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (or hub id already cached)")
    parser.add_argument(
        "--device", default="cpu", help="torch device to run on, e.g. cpu or cuda (default: %(default)s)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="weights and compute: auto is the checkpoint's, as from_pretrained loads it; float32 "
        "compares with Tandem on a CPU without native bf16, where it computes bf16 checkpoints in "
        "float32 (default: %(default)s)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=_one_at_a_time,
        default=1,
        metavar="1",
        help="accepted so that serve's options with --max-concurrency 1 run here as they are; the hf arm "
        "runs requests one at a time, so any other value is an error",
    )
    _add_workload(parser)
    parser.set_defaults(run=run_hf)


def _one_at_a_time(value: str) -> int:
    """``hf --max-concurrency``: 1, or an argparse error that says why nothing else is."""
    try:
        if int(value) == 1:
            return 1
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"the hf arm runs requests one at a time (batch 1), so only 1 is accepted, not {value!r}"
    )


def _add_workload(parser: argparse.ArgumentParser) -> None:
    """The options ``serve`` and ``hf`` share, so that one workload string runs on both: the
    seeded requests, how each is generated and judged, and where the result goes."""
    _add_dataset(parser)
    parser.add_argument(
        "--num-warmups", type=int, default=1, help="warm-up conversations run first, not counted (default: 1)"
    )
    parser.add_argument(
        "--ignore-eos",
        action="store_true",
        help="generate exactly --output-len tokens: sends ignore_eos (vLLM's extension; Tandem's too)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default: 0)"
    )
    parser.add_argument(
        "--goodput",
        nargs="+",
        default=[],
        metavar="NAME:MS",
        help="SLOs for goodput, e.g. --goodput ttft:500 tpot:50 (names: ttft, tpot, e2el; milliseconds)",
    )
    _add_output(parser, "<benchmark>-<dataset>-<time>.json")


def _add_dataset(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload (seeded: the same options give the same requests)")
    group.add_argument(
        "--dataset",
        choices=("random", "random-mm"),
        default="random-mm",
        help="random: text-only prompts; random-mm: prompts with images (default: %(default)s)",
    )
    group.add_argument("--num-prompts", type=int, default=100, help="conversations to run (default: 100)")
    group.add_argument(
        "--turns",
        type=int,
        default=1,
        help="user turns per conversation; images go in the first (default: 1)",
    )
    group.add_argument(
        "--prompt-len",
        type=int,
        default=32,
        help="words of synthetic text per turn, about as many tokens; the server's count is in the "
        "result (default: %(default)s)",
    )
    group.add_argument(
        "--output-len", type=int, default=64, help="max_tokens of each request (default: %(default)s)"
    )
    group.add_argument(
        "--range-ratio",
        type=float,
        default=0.0,
        help="draw each length uniformly from len*(1-r)..len*(1+r) (default: 0, fixed lengths)",
    )
    group.add_argument(
        "--mm-image-size",
        action="append",
        metavar="WxH",
        help="size of the images, e.g. 224x224; repeat for several, each image draws one (default: 224x224)",
    )
    group.add_argument(
        "--mm-images-per-request", type=int, default=1, help="images in each first turn (default: 1)"
    )
    group.add_argument(
        "--mm-pool-size", type=int, default=100, help="distinct images that can be reused (default: 100)"
    )
    group.add_argument(
        "--mm-reuse",
        type=float,
        default=0.0,
        help="fraction of images that repeat an image already sent, drawn from the pool; the rest are "
        "new (default: 0)",
    )
    group.add_argument(
        "--mm-image-format", choices=("jpeg", "png"), default="jpeg", help="encoding of the images"
    )
    group.add_argument(
        "--seed", type=int, default=0, help="seed of prompts, images and arrivals (default: 0)"
    )


def _add_output(parser: argparse.ArgumentParser, filename: str) -> None:
    """Where the JSON result goes (``filename``: the default name, as help shows it), and the
    progress bar: serve, hf and overhead."""
    parser.add_argument(
        "--result-dir",
        type=Path,
        default=Path("bench/results"),
        help="folder of the JSON result (default: %(default)s, git-ignored)",
    )
    parser.add_argument("--result-filename", help=f"name of the JSON file (default: {filename})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_compare(sub: Any) -> None:
    parser = sub.add_parser(
        "compare",
        help="two result files side by side, with the ratio B / A",
        description="Print the metrics of two result files of tandem bench side by side, with B / A.",
    )
    parser.add_argument("a", type=Path, help="result JSON of the baseline run (A)")
    parser.add_argument("b", type=Path, help="result JSON of the run compared with it (B)")
    parser.set_defaults(run=run_compare)


def _add_overhead(sub: Any) -> None:
    parser = sub.add_parser(
        "overhead",
        help="B10: latency added by the gateway (gRPC, OpenAI HTTP) over the in-process worker",
        description=(
            "B10: the same text-only prompt, interleaved A B C after warm-up rounds: A the language "
            "worker in this process (built as the service builds it), B the gateway over gRPC with "
            "Tandem's Python client, C the gateway's OpenAI endpoint (streaming). Reports each arm's "
            "p50/p90 (p99 with 100+ samples) and the latency B and C add over A at p50. D, the floor: "
            "two bare gRPC hops (relay and backend processes, no Tandem code) around a compute as "
            "long as A's, so what B and C add above it is Tandem's own. Without --address/--base-url "
            "it starts `tandem up` on free ports itself and stops it at the end."
        ),
    )
    _add_overhead_system(parser)
    _add_overhead_rounds(parser)
    _add_output(parser, "overhead-<time>.json")
    parser.set_defaults(run=run_overhead)


def _add_overhead_system(parser: argparse.ArgumentParser) -> None:
    """``overhead``: the model, and the gateway it measures (a running one, or one it starts)."""
    parser.add_argument(
        "--checkpoint",
        default=os.environ.get("TANDEM_MODEL"),
        help="checkpoint of the in-process arm and of the system it starts (default: $TANDEM_MODEL, "
        "else Tandem's default model, as `tandem up`)",
    )
    parser.add_argument("--address", help="gRPC host:port of a running gateway (with --base-url)")
    parser.add_argument("--base-url", help="OpenAI base URL of the same running gateway (with --address)")
    parser.add_argument(
        "--api-key", help="the gateway's key, for both arms (default: $OPENAI_API_KEY, else none)"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the models run (default: auto)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds `tandem up` may take to be ready"
    )
    parser.add_argument(
        "--log-dir", type=Path, help="logs of the `tandem up` it starts (default: a new temporary folder)"
    )


def _add_overhead_rounds(parser: argparse.ArgumentParser) -> None:
    """``overhead``: the rounds measured, their prompt, and whether arm D runs."""
    parser.add_argument("--num-samples", type=int, default=50, help="measured rounds (default: %(default)s)")
    parser.add_argument(
        "--num-warmups", type=int, default=5, help="rounds first, not counted (default: %(default)s)"
    )
    parser.add_argument(
        "--prompt-len", type=int, default=32, help="words of the prompt, about one token each (default: 32)"
    )
    parser.add_argument(
        "--output-len",
        type=int,
        default=1,
        help="tokens generated per request (ignore_eos); above 1 the added cost per token is reported too "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt's words (default: 0)")
    parser.add_argument(
        "--no-floor", action="store_true", help="skip arm D (the bare two-hop gRPC floor of this machine)"
    )


def _add_checkpoint(sub: Any) -> None:
    from tandem.bench.checkpoints import SHAPES

    parser = sub.add_parser(
        "checkpoint",
        help="build a random-weight checkpoint at a published shape",
        description=(
            "Build a checkpoint with random bf16 weights at the shape of a published model, with a "
            "tokenizer trained here at the model's vocabulary size, a chat template and the processor; "
            "saved in the hub layout, so Tandem, transformers and vLLM load it. Nothing is downloaded. "
            "Shapes: " + "; ".join(f"{name}: {shape.summary}" for name, shape in SHAPES.items())
        ),
    )
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES), help="which published shape")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the weights (default: 0)")
    parser.add_argument(
        "--layers", type=int, help="override the layer count of both towers (smaller test builds only)"
    )
    parser.add_argument(
        "--vocab-size", type=int, help="override the vocabulary size (smaller test builds only)"
    )
    parser.set_defaults(run=run_checkpoint)


def _slo(args: argparse.Namespace) -> Slo | None:
    from tandem.bench.metrics import Slo

    return Slo.parse(args.goodput)


def _dataset(args: argparse.Namespace) -> DatasetConfig:
    from tandem.bench.dataset import DatasetConfig, parse_size

    return DatasetConfig(
        name=args.dataset,
        num_conversations=args.num_prompts,
        turns=args.turns,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        range_ratio=args.range_ratio,
        image_sizes=tuple(parse_size(s) for s in args.mm_image_size or ["224x224"]),
        images_per_request=args.mm_images_per_request,
        pool_size=args.mm_pool_size,
        reuse=args.mm_reuse,
        image_format=args.mm_image_format,
        seed=args.seed,
    )


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from tandem.bench.client import ServerError
    from tandem.bench.dataset import build_dataset
    from tandem.bench.runner import ServeConfig, ServeRunner
    from tandem.bench.scrape import ScrapeError, StageProbe

    urls = args.base_url or ["http://127.0.0.1:8000/v1"]
    try:
        config = ServeConfig(
            base_url=urls[0], more_base_urls=tuple(urls[1:]), dataset=_dataset(args), model=args.model,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), request_rate=args.request_rate,
            max_concurrency=args.max_concurrency, warmups=args.num_warmups, sessions=args.sessions,
            ignore_eos=args.ignore_eos, temperature=args.temperature,
            request_timeout_s=args.request_timeout, slo=_slo(args),
        )  # fmt: skip
    except ValueError as exc:
        return _fail(exc, 2)
    probe = StageProbe(args.metrics_url) if args.metrics_url else None
    try:
        if probe is not None:
            probe.check()
    except ScrapeError as exc:
        return _fail(exc, 1)
    measured, warmup = build_dataset(config.dataset, warmup=config.warmups)
    with _Progress(_requests(measured), args.no_progress) as progress:
        runner = ServeRunner(config, progress.update, probe.start if probe is not None else None)
        try:
            outcome = asyncio.run(runner.run(measured, warmup))
            if probe is not None:
                probe.finish()
        except (ServerError, OSError, ScrapeError) as exc:
            return _fail(exc, 1)
    server: dict[str, Any] = {"base_url": runner.endpoint.base_url, "model": outcome.model}
    if len(runner.endpoints) > 1:
        server["base_urls"] = [e.base_url for e in runner.endpoints]
    return _finish("serve", config, server, outcome, args, probe)


def run_hf(args: argparse.Namespace) -> int:
    from tandem.bench.dataset import build_dataset
    from tandem.bench.hf_arm import HfConfig, HfRunner

    if args.temperature != 0:
        return _fail(
            ValueError("the hf arm is greedy (generate() with do_sample=False): use --temperature 0"), 2
        )
    try:
        config = HfConfig(
            checkpoint=args.checkpoint, dataset=_dataset(args), warmups=args.num_warmups,
            ignore_eos=args.ignore_eos, device=args.device, slo=_slo(args), dtype=args.dtype,
        )  # fmt: skip
    except ValueError as exc:
        return _fail(exc, 2)
    measured, warmup = build_dataset(config.dataset, warmup=config.warmups)
    with _Progress(_requests(measured), args.no_progress) as progress:
        outcome = HfRunner(config, progress.update).run(measured, warmup)
    return _finish("hf", config, {"checkpoint": args.checkpoint, "arm": "hf generate()"}, outcome, args)


def _requests(conversations: list[Conversation]) -> int:
    return sum(len(c.turns) for c in conversations)


def _finish(
    benchmark: str,
    config: Any,
    server: dict[str, Any],
    outcome: ServeOutcome,
    args: Any,
    probe: StageProbe | None = None,
) -> int:
    from tandem.bench import report
    from tandem.bench.metrics import compute_metrics
    from tandem.bench.scrape import print_stages

    metrics = compute_metrics(outcome.records, outcome.duration_s, config.slo)
    doc = report.document(benchmark, config, server, metrics, outcome.records)
    if probe is not None:
        doc["server_stages"] = probe.report(
            metrics.completed, metrics.ttft.mean if metrics.completed else None
        )
    path = report.write(doc, args.result_dir, args.result_filename)
    report.print_run(doc)
    if probe is not None:
        print_stages(doc["server_stages"], sys.stdout)
    if errors := sorted({r.error for r in outcome.records if not r.success}):
        print(f"{metrics.failed} requests failed; first error: {errors[0]}", file=sys.stderr)
    print(f"result: {path}", file=sys.stderr)
    return 0 if metrics.completed else 1


def run_compare(args: argparse.Namespace) -> int:
    from tandem.bench import report

    try:
        a, b = (json.loads(path.read_text()) for path in (args.a, args.b))
    except (OSError, ValueError) as exc:
        return _fail(exc, 2)
    print(f"A: {args.a} ({a.get('command_line', '?')})")
    print(f"B: {args.b} ({b.get('command_line', '?')})")
    report.print_comparison(a, b)
    return 0


def run_overhead(args: argparse.Namespace) -> int:
    from tandem.bench.overhead import OverheadConfig, run_benchmark
    from tandem.cli.up import default_model

    try:
        config = OverheadConfig(
            checkpoint=args.checkpoint or default_model(sys.stderr), address=args.address,
            base_url=args.base_url, samples=args.num_samples, warmups=args.num_warmups,
            prompt_len=args.prompt_len, output_len=args.output_len, seed=args.seed, device=args.device,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), startup_timeout_s=args.startup_timeout,
            floor=not args.no_floor,
        )  # fmt: skip
    except ValueError as exc:
        return _fail(exc, 2)
    return run_benchmark(config, args.result_dir, args.result_filename, args.log_dir, not args.no_progress)


def run_checkpoint(args: argparse.Namespace) -> int:
    from tandem.bench.checkpoints import build

    try:
        path = build(args.shape, args.out, seed=args.seed, layers=args.layers, vocab_size=args.vocab_size)
    except ValueError as exc:
        return _fail(exc, 2)
    print(f"checkpoint {args.shape} written to {path}", file=sys.stderr)
    return 0


def _fail(exc: Exception, code: int) -> int:
    print(f"tandem bench: {exc}", file=sys.stderr)
    return code


class _Progress:
    """A tqdm bar of requests on stderr (tqdm ships with transformers), or nothing."""

    def __init__(self, total: int, disabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="req", file=sys.stderr, disable=disabled, dynamic_ncols=True)
        self.failed = 0

    def update(self, record: RequestRecord) -> None:
        self.failed += not record.success
        if self.failed:
            self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
