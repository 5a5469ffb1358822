"""``tandem bench overhead`` (B10): the latency a text-only request gains by going through the system.

Three arms answer the same prompt, interleaved ``A B C A B C ...`` after warm-up rounds that are
not counted:

- ``in-process`` (A, the baseline): the language worker built from the checkpoint exactly as the
  service builds it (``llm_service.loader.load`` + ``llm_service.server.build_worker`` with
  ``LlmConfig(model=...)``, engine started, worker warmed up), ``worker.generate()`` consumed fully;
- ``grpc`` (B): the gateway over gRPC with Tandem's Python client (``AsyncPipeline.stream_infer``);
- ``http`` (C): the gateway's OpenAI endpoint, one streaming chat completion
  (``tandem.bench.client.stream_chat``, as ``tandem bench serve`` sends it).

Each sample's clock starts when the arm is called and stops at the end of the stream; TTFT stops
at the first event carrying a generated token. All arms ask for ``output_len`` tokens with
``ignore_eos``, greedy, so each generates exactly that many (with ``output_len`` > 1, TPOT per
sample gives the added cost per token too). The engine of the in-process arm runs only during
its own samples: between them its thread sleeps.

Figures (milliseconds): per arm, latency, TTFT and TPOT as count / mean / p50 / p90, and p99
only with at least ``P99_MIN_SAMPLES`` samples. The added latency of B and C over A is the
difference of the p50s, with the ratio of the p50s, and the median of the per-round differences
(the arms of one round run back to back, so pairing removes slow drifts of a shared machine).

The system is one already running (``address`` and ``base_url``) or one this benchmark starts:
``tandem up --model CKPT`` as a child on free ports, through ``tandem.launcher.Launcher`` (its
own process group, logs in a folder, SIGTERM then SIGKILL at the end whatever happened), armed to
get SIGTERM should this process die first (``tandem.serving.parent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tandem.bench.dataset import WORDS
from tandem.bench.metrics import Distribution, percentile
from tandem.bench.overhead_arms import Arm, ArmName, GrpcArm, HttpArm, InProcessArm, Sample

if TYPE_CHECKING:
    from tandem.launcher import Child

BASELINE: ArmName = "in-process"
SYSTEM_ARMS: tuple[ArmName, ...] = ("grpc", "http")
FLOOR: ArmName = "floor"  # two bare gRPC hops around the same compute (tandem.bench.floor)
P99_MIN_SAMPLES = 100
READY_LINE = "Tandem is ready"


@dataclass(frozen=True)
class OverheadConfig:
    """One ``tandem bench overhead`` run. ``address`` (gRPC host:port) and ``base_url`` (OpenAI)
    name a running system and go together; without them the benchmark starts its own."""

    checkpoint: str
    address: str | None = None
    base_url: str | None = None
    samples: int = 50
    warmups: int = 5
    prompt_len: int = 32
    output_len: int = 1
    seed: int = 0
    device: str = "auto"
    api_key: str | None = field(default=None, repr=False)
    startup_timeout_s: float = 600.0
    request_timeout_s: float = 300.0
    floor: bool = True

    def __post_init__(self) -> None:
        if (self.address is None) != (self.base_url is None):
            raise ValueError("give --address and --base-url together (a running system), or neither")
        if self.samples < 1:
            raise ValueError(f"{self.samples=} must be >= 1")
        if self.warmups < 0:
            raise ValueError(f"{self.warmups=} must be >= 0")
        if self.prompt_len < 1 or self.output_len < 1:
            raise ValueError(f"{self.prompt_len=} and {self.output_len=} must be >= 1")
        if self.startup_timeout_s <= 0 or self.request_timeout_s <= 0:
            raise ValueError("timeouts must be > 0 seconds")

    def public(self) -> dict[str, Any]:
        """The configuration for the result file (no API key)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "api_key"}


@dataclass(frozen=True)
class Quantiles:
    """One quantity over the samples of an arm, in ms; ``p99`` is ``None`` below
    ``P99_MIN_SAMPLES`` samples (too few to mean anything)."""

    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float | None = None

    @classmethod
    def of_seconds(cls, samples: Sequence[float]) -> Quantiles:
        d = Distribution.of_seconds(samples)
        p99 = d.p99 if d.count >= P99_MIN_SAMPLES else None
        return cls(d.count, d.mean, d.median, d.p90, p99)


@dataclass(frozen=True)
class ArmStats:
    """What one arm measured: successful and failed samples, latency, TTFT and TPOT (ms)."""

    completed: int
    failed: int
    latency: Quantiles
    ttft: Quantiles
    tpot: Quantiles

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> ArmStats:
        done = [s for s in samples if s.success]
        return cls(
            completed=len(done),
            failed=len(samples) - len(done),
            latency=Quantiles.of_seconds([s.latency for s in done]),
            ttft=Quantiles.of_seconds([s.ttft for s in done]),
            tpot=Quantiles.of_seconds([t for s in done if (t := s.tpot) is not None]),
        )


@dataclass(frozen=True)
class Added:
    """What an arm adds to the baseline (ms): p50 minus p50, the ratio of the p50s, the median of
    the per-round differences; ``per_token_p50`` is the TPOT p50 difference (``None`` without
    TPOT samples). ``None`` where an arm has no successful sample."""

    p50: float | None
    ratio_p50: float | None
    paired_p50: float | None
    per_token_p50: float | None


def added(baseline: Sequence[Sample], other: Sequence[Sample]) -> Added:
    """The cost of ``other`` over ``baseline``, both samples of the same rounds."""
    base, arm = ArmStats.of(baseline), ArmStats.of(other)
    if not (base.completed and arm.completed):
        return Added(None, None, None, None)
    firsts = {s.round: s.latency for s in baseline if s.success}
    pairs = [s.latency - firsts[s.round] for s in other if s.success and s.round in firsts]
    per_token = arm.tpot.p50 - base.tpot.p50 if base.tpot.count and arm.tpot.count else None
    return Added(
        p50=arm.latency.p50 - base.latency.p50,
        ratio_p50=arm.latency.p50 / base.latency.p50 if base.latency.p50 > 0 else None,
        paired_p50=percentile([p * 1000 for p in pairs], 50) if pairs else None,
        per_token_p50=per_token,
    )


@dataclass(frozen=True)
class OverheadMetrics:
    """The figures of a run: per arm, and what each system arm adds to the in-process one."""

    arms: dict[str, ArmStats]
    added: dict[str, Added]

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> OverheadMetrics:
        by_arm: dict[str, list[Sample]] = {}
        for sample in samples:
            by_arm.setdefault(sample.arm, []).append(sample)
        base = by_arm.get(BASELINE, [])
        return cls(
            arms={name: ArmStats.of(group) for name, group in by_arm.items()},
            added={name: added(base, by_arm[name]) for name in (*SYSTEM_ARMS, FLOOR) if name in by_arm},
        )


def make_prompt(words: int, seed: int) -> str:
    """``words`` seeded words from the benchmark's vocabulary (about one token each)."""
    rng = random.Random(seed)
    return " ".join(rng.choices(WORDS, k=words)).capitalize() + "."


# ------------------------------------------------------------------------------------ the run


@dataclass
class OverheadOutcome:
    """The samples of a run (measured rounds only) and what the arms learned of the model."""

    samples: list[Sample]
    duration_s: float
    model: str
    fingerprints: dict[str, str]


async def run_rounds(
    config: OverheadConfig,
    address: str,
    base_url: str,
    on_sample: Callable[[Sample], None] = lambda _: None,
    say: Callable[[str], None] = lambda _: None,
) -> OverheadOutcome:
    """Open the arms, run ``warmups`` then ``samples`` rounds A B C (D), close the arms."""
    from tandem.bench.floor import FloorArm

    prompt = make_prompt(config.prompt_len, config.seed)
    grpc_arm, http_arm = GrpcArm(config, address), HttpArm(config, base_url)
    in_process = InProcessArm(config)
    arms: list[Arm] = [in_process, grpc_arm, http_arm]
    if config.floor:
        arms.append(FloorArm(lambda: in_process.last_latency, config.request_timeout_s))
    async with contextlib.AsyncExitStack() as stack:
        for arm in arms:
            say(f"opening the {arm.name} arm...")
            stack.push_async_callback(arm.close)
            await arm.open()
        if in_process.fingerprint != grpc_arm.fingerprint:
            say("warning: the system serves another checkpoint than --checkpoint (fingerprints differ)")
        names = " ".join("ABCD"[: len(arms)])
        say(f"measuring: {config.warmups} warm-up rounds, then {config.samples} rounds {names}")
        samples: list[Sample] = []
        started = time.perf_counter()
        for round_ in range(-config.warmups, config.samples):
            if round_ == 0:
                started = time.perf_counter()
            for arm in arms:
                sample = await _sample(arm, prompt, round_)
                if round_ >= 0:
                    samples.append(sample)
                    on_sample(sample)
        duration = time.perf_counter() - started
    fingerprints = {BASELINE: in_process.fingerprint, "system": grpc_arm.fingerprint}
    return OverheadOutcome(samples, duration, grpc_arm.model or http_arm.model, fingerprints)


async def _sample(arm: Arm, prompt: str, round_: int) -> Sample:
    """One sample; a failure is a failed sample, never the run's end."""
    try:
        return await arm.sample(prompt, round_)
    except Exception as exc:
        return Sample(arm.name, round_, error=f"{type(exc).__name__}: {exc}"[:500])


# ------------------------------------------------------------------------------ the system


@dataclass(frozen=True)
class System:
    """Where the system under test listens, and (when this benchmark started it) its logs."""

    address: str
    base_url: str
    log_dir: Path | None = None

    @property
    def started_here(self) -> bool:
        return self.log_dir is not None


def up_command(config: OverheadConfig, log_dir: Path) -> tuple[str, ...]:
    """``tandem up`` on free loopback ports, armed to stop when this process dies; its own data
    folder under ``log_dir`` (the default one is locked by any other ``tandem up`` running)."""
    up = ("-m", "tandem.cli", "up", "--model", config.checkpoint, "--device", config.device)
    ports = ("--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0")
    files = ("--log-dir", str(log_dir), "--data-dir", str(log_dir / "data"))
    return (sys.executable, "-m", "tandem.serving.parent", sys.executable, *up, *ports, *files)


@contextlib.contextmanager
def started_system(config: OverheadConfig, log_dir: Path | None = None, out: Any = None) -> Iterator[System]:
    """``tandem up`` for the block (see the module docstring); stopped at its end whatever happened."""
    from tandem.launcher import Launcher, ServiceSpec

    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="tandem-bench-overhead-"))
    launcher = Launcher(log_dir, out=out or sys.stderr)
    spec = ServiceSpec("up", up_command(config, log_dir), port_file=log_dir / "gateway.port")
    try:
        child = launcher.spawn(spec)
        launcher.say(f"  command: {shlex.join(spec.command[3:])}")
        _wait_ready(child, config.startup_timeout_s)
        grpc_port = (log_dir / "gateway.port").read_text().strip()
        http_port = (log_dir / "gateway.http-port").read_text().strip()
        yield System(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}/v1", log_dir)
    finally:
        launcher.shutdown([("up",)], timeout=60.0)


def _wait_ready(child: Child, timeout: float) -> None:
    """Until ``tandem up`` prints its ready line; ``ChildFailed`` when it exits or times out."""
    deadline = time.monotonic() + timeout
    while READY_LINE not in _read(child.log_path):
        if (code := child.exited()) is not None:
            raise child.failure(f"exited with code {code} during start-up")
        if time.monotonic() > deadline:
            raise child.failure(f"was not ready within {timeout:.0f} s")
        time.sleep(0.5)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------------ the result


def document(config: OverheadConfig, system: System, outcome: OverheadOutcome) -> dict[str, Any]:
    """The JSON document of a run: as the other ``tandem bench`` files, with ``samples`` (one per
    request) in place of ``requests``."""
    from tandem.bench import report

    metrics = OverheadMetrics.of(outcome.samples)
    return {
        "benchmark": "overhead",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command_line": shlex.join(["tandem", *sys.argv[1:]]),
        "config": config.public(),
        "machine": report.machine(),
        "server": {
            "address": system.address,
            "base_url": system.base_url,
            "started_by_benchmark": system.started_here,
            "log_dir": None if system.log_dir is None else str(system.log_dir),
            "model": outcome.model,
            "fingerprints": outcome.fingerprints,
        },
        "metrics": {"duration_s": outcome.duration_s, **dataclasses.asdict(metrics)},
        "samples": [dataclasses.asdict(s) for s in outcome.samples],
    }


def print_result(doc: dict[str, Any], out: Any = None) -> None:
    """The short table: each arm's latency, then what the system arms add at p50."""
    from tandem.bench.report import print_table

    out = out or sys.stdout
    arms, extra = doc["metrics"]["arms"], doc["metrics"]["added"]
    per_token = doc["config"]["output_len"] > 1
    header = ["arm", "samples", "failed", "p50 ms", "p90 ms", "p99 ms", "added p50 ms", "paired ms", "x A"]
    header += ["TPOT p50 ms", "added/token ms"] if per_token else []
    rows = []
    for name in (BASELINE, *SYSTEM_ARMS, FLOOR):
        stats, more = arms.get(name), extra.get(name, {})
        if stats is None:
            continue
        latency = stats["latency"]
        row = [
            name,
            stats["completed"],
            stats["failed"],
            *_ms(latency["p50"], latency["p90"], latency["p99"]),
        ]
        row += [*_ms(more.get("p50"), more.get("paired_p50")), _ratio(more.get("ratio_p50"))]
        row += _ms(stats["tpot"]["p50"], more.get("per_token_p50")) if per_token else []
        rows.append(row)
    print_table(header, rows, out)
    floor = extra.get(FLOOR, {}).get("paired_p50")
    if floor is not None:
        print(
            f"the floor (two bare gRPC hops around the same compute) adds {floor:.2f} ms (paired p50)",
            file=out,
        )
        for name in SYSTEM_ARMS:
            if (paired := extra.get(name, {}).get("paired_p50")) is not None:
                print(f"  {name}: {paired - floor:.2f} ms above the floor", file=out)


def _ms(*values: float | None) -> list[str]:
    return ["-" if v is None else f"{v:.2f}" for v in values]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_benchmark(
    config: OverheadConfig,
    result_dir: Path,
    filename: str | None = None,
    log_dir: Path | None = None,
    progress: bool = True,
) -> int:
    """The whole command: the system (given or started), the rounds, the file and the table.
    0 when every arm completed a sample; 1 otherwise or when the system could not start."""
    from tandem.bench import report
    from tandem.client import TandemClientError
    from tandem.launcher import ChildFailed

    with contextlib.ExitStack() as stack:
        try:
            system = stack.enter_context(_system(config, log_dir))
        except ChildFailed as exc:
            _say(f"tandem bench: {exc}")
            return 1
        arm_count = 4 if config.floor else 3
        bar = stack.enter_context(_Progress(arm_count * config.samples, progress))
        rounds = run_rounds(config, system.address, system.base_url, bar.update, _say)
        try:
            outcome = asyncio.run(rounds)
        except (OSError, RuntimeError, ValueError, TandemClientError) as exc:  # a model or server unusable
            _say(f"tandem bench: {type(exc).__name__}: {exc}")
            return 1
    doc = document(config, system, outcome)
    path = report.write(doc, result_dir, filename or f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json")
    print_result(doc)
    if errors := [s.error for s in outcome.samples if not s.success]:
        _say(f"{len(errors)} samples failed; first error: {errors[0]}")
    _say(f"result: {path}")
    return 0 if all(a["completed"] for a in doc["metrics"]["arms"].values()) else 1


def _system(config: OverheadConfig, log_dir: Path | None) -> contextlib.AbstractContextManager[System]:
    if config.address is not None and config.base_url is not None:
        return contextlib.nullcontext(System(config.address, config.base_url))
    _say(f"starting tandem up --model {config.checkpoint} on free ports...")
    return started_system(config, log_dir)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Progress:
    """A tqdm bar of samples on stderr, shown from the first measured sample (the arms load first)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.bar: Any = None

    def update(self, sample: Sample) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="req", file=sys.stderr, disable=not self.enabled)
        self.bar.update(1)
        if not sample.success:
            self.bar.set_postfix(failed=sample.arm, refresh=False)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
