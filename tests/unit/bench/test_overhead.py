"""``tandem bench overhead``'s pure parts: per-arm figures, what an arm adds over the baseline,
the prompt, the configuration, the table and the command line (no model, no server)."""

from __future__ import annotations

import argparse
import io

import pytest

from tandem.bench.overhead import (
    P99_MIN_SAMPLES,
    ArmStats,
    OverheadConfig,
    OverheadMetrics,
    OverheadOutcome,
    Quantiles,
    System,
    added,
    document,
    make_prompt,
    print_result,
    up_command,
)
from tandem.bench.overhead_arms import Sample
from tandem.cli import build_parser


def samples(arm: str, latencies_ms: list[float], tokens: int = 1, ttft_ms: float = 0.0) -> list[Sample]:
    return [
        Sample(arm, i, ttft=(ttft_ms or ms) / 1000, latency=ms / 1000, output_tokens=tokens)  # type: ignore[arg-type]
        for i, ms in enumerate(latencies_ms)
    ]


def test_quantiles_report_p99_only_from_enough_samples() -> None:
    few = Quantiles.of_seconds([i / 1000 for i in range(P99_MIN_SAMPLES - 1)])
    enough = Quantiles.of_seconds([i / 1000 for i in range(P99_MIN_SAMPLES)])
    assert few.p99 is None and few.count == P99_MIN_SAMPLES - 1
    assert enough.p99 == pytest.approx(98.01) and enough.p50 == pytest.approx(49.5)
    assert Quantiles.of_seconds([]) == Quantiles()


def test_arm_stats_leave_failures_out() -> None:
    ok = samples("grpc", [10.0, 20.0, 30.0], tokens=3, ttft_ms=4.0)
    failed = Sample("grpc", 3, latency=99.0, error="Unavailable: down")
    stats = ArmStats.of([*ok, failed])
    assert (stats.completed, stats.failed) == (3, 1)
    assert stats.latency.p50 == pytest.approx(20.0) and stats.ttft.p50 == pytest.approx(4.0)
    assert stats.tpot.p50 == pytest.approx(8.0)  # (20 - 4) / (3 - 1)


def test_sample_tpot_needs_two_tokens() -> None:
    assert Sample("http", 0, ttft=0.01, latency=0.05, output_tokens=1).tpot is None
    assert Sample("http", 0, ttft=0.01, latency=0.05, output_tokens=5).tpot == pytest.approx(0.01)


def test_added_is_the_difference_of_p50s_with_ratio_and_paired_median() -> None:
    base = samples("in-process", [10.0, 12.0, 50.0])
    other = samples("grpc", [13.0, 14.0, 51.0])
    result = added(base, other)
    assert result.p50 == pytest.approx(2.0)  # 14 - 12
    assert result.ratio_p50 == pytest.approx(14 / 12)
    assert result.paired_p50 == pytest.approx(2.0)  # median of 3, 2, 1
    assert result.per_token_p50 is None  # one token each: no TPOT


def test_added_pairs_only_rounds_where_both_arms_succeeded() -> None:
    base = samples("in-process", [10.0, 10.0, 10.0])
    base[1].error = "failed"
    other = samples("http", [11.0, 100.0, 12.0])
    assert added(base, other).paired_p50 == pytest.approx(1.5)  # rounds 0 and 2: 1 ms and 2 ms


def test_added_per_token_from_tpot() -> None:
    base = samples("in-process", [30.0, 30.0], tokens=11, ttft_ms=10.0)  # TPOT 2 ms
    other = samples("grpc", [45.0, 45.0], tokens=11, ttft_ms=15.0)  # TPOT 3 ms
    assert added(base, other).per_token_p50 == pytest.approx(1.0)


def test_added_without_successes_is_empty() -> None:
    failed = [Sample("in-process", 0, error="boom")]
    result = added(failed, samples("grpc", [5.0]))
    assert (result.p50, result.ratio_p50, result.paired_p50, result.per_token_p50) == (None,) * 4


def test_metrics_group_arms_and_compare_system_arms_with_the_baseline() -> None:
    rounds = [*samples("in-process", [10.0, 11.0]), *samples("grpc", [12.0, 14.0]), *samples("http", [11.0])]
    metrics = OverheadMetrics.of(rounds)
    assert set(metrics.arms) == {"in-process", "grpc", "http"}
    assert set(metrics.added) == {"grpc", "http"}
    assert metrics.added["grpc"].p50 == pytest.approx(13.0 - 10.5)
    assert metrics.arms["http"].completed == 1


def test_prompt_is_seeded_and_has_the_words_asked_for() -> None:
    assert make_prompt(12, 3) == make_prompt(12, 3) != make_prompt(12, 4)
    assert len(make_prompt(12, 3).split()) == 12 and make_prompt(12, 3).endswith(".")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "127.0.0.1:1"}, "together"),
        ({"base_url": "http://x/v1"}, "together"),
        ({"samples": 0}, "samples"),
        ({"warmups": -1}, "warmups"),
        ({"output_len": 0}, "output_len"),
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OverheadConfig("ckpt", **kwargs)  # type: ignore[arg-type]


def test_the_api_key_stays_out_of_the_result() -> None:
    config = OverheadConfig("ckpt", api_key="secret")
    assert "api_key" not in config.public() and "secret" not in repr(config)


def test_the_system_it_starts_is_tandem_up_on_free_ports_following_this_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    command = up_command(OverheadConfig("/m", device="cpu"), tmp_path)
    assert command[1:3] == ("-m", "tandem.serving.parent")  # SIGTERM should this process die
    assert command[4:7] == ("-m", "tandem.cli", "up")
    flags = dict(zip(command[7::2], command[8::2], strict=True))
    assert flags == {
        "--model": "/m",
        "--device": "cpu",
        "--host": "127.0.0.1",
        "--grpc-port": "0",
        "--http-port": "0",
        "--log-dir": str(tmp_path),
        "--data-dir": str(tmp_path / "data"),  # never the default folder another `tandem up` locks
    }


def test_document_and_table() -> None:
    config = OverheadConfig("ckpt", output_len=3, api_key="secret")
    rounds = [
        *samples("in-process", [10.0, 12.0], tokens=3, ttft_ms=4.0),
        *samples("grpc", [13.0, 15.0], tokens=3, ttft_ms=5.0),
        *samples("http", [12.0, 14.0], tokens=3, ttft_ms=5.0),
    ]
    outcome = OverheadOutcome(rounds, 0.1, "m", {"in-process": "f", "system": "f"})
    doc = document(config, System("127.0.0.1:1", "http://127.0.0.1:2/v1"), outcome)
    assert doc["benchmark"] == "overhead" and len(doc["samples"]) == 6
    assert doc["server"]["started_by_benchmark"] is False and "api_key" not in doc["config"]
    assert doc["metrics"]["added"]["grpc"]["p50"] == pytest.approx(3.0)
    out = io.StringIO()
    print_result(doc, out)
    lines = out.getvalue().splitlines()
    assert "added p50 ms" in lines[0] and "added/token ms" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["in-process", "grpc", "http"]
    assert lines[3].split()[6] == "3.00"  # grpc: 14 - 11 ms at p50


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help() -> None:
    parser = subparsers(subparsers(build_parser())["bench"])["overhead"]
    assert parser.description and "B10" in parser.description
    for action in parser._actions:
        assert action.help and action.help.strip(), action.dest


def test_an_address_without_a_base_url_fails_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["bench", "overhead", "--checkpoint", "ckpt", "--address", "h:1"])
    assert args.run(args) == 2
    assert "--base-url" in capsys.readouterr().err
