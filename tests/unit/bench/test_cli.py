"""``tandem bench``'s command line: every option explained, options reach the configs."""

from __future__ import annotations

import argparse

import pytest

from tandem.cli import bench as bench_cli
from tandem.cli import build_parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["serve", "hf", "compare", "checkpoint"])
def test_every_option_has_help(command: str) -> None:
    parser = subparsers(subparsers(build_parser())["bench"])[command]
    assert parser.description
    for action in parser._actions:
        assert action.help and action.help.strip(), action.dest


def test_serve_options_reach_the_dataset() -> None:
    args = build_parser().parse_args(
        ["bench", "serve", "--dataset", "random-mm", "--mm-image-size", "224x224", "--mm-image-size", "64x32",
         "--mm-reuse", "0.8", "--num-prompts", "7", "--turns", "4", "--goodput", "ttft:500", "tpot:50"]
    )  # fmt: skip
    dataset = bench_cli._dataset(args)
    assert dataset.image_sizes == ((224, 224), (64, 32)) and dataset.reuse == 0.8
    assert (dataset.num_conversations, dataset.turns) == (7, 4)
    assert bench_cli._slo(args) is not None


WORKLOAD = ["--dataset", "random-mm", "--num-prompts", "6", "--turns", "2", "--mm-reuse", "0.5",
            "--max-concurrency", "1", "--ignore-eos"]  # fmt: skip


def test_hf_takes_a_serve_workload_at_concurrency_1() -> None:
    serve = build_parser().parse_args(["bench", "serve", *WORKLOAD])
    hf = build_parser().parse_args(["bench", "hf", "--checkpoint", "ckpt", *WORKLOAD])
    assert hf.run is bench_cli.run_hf and hf.max_concurrency == 1 and serve.max_concurrency == 1
    assert bench_cli._dataset(hf) == bench_cli._dataset(serve)
    assert build_parser().parse_args(["bench", "hf", "--checkpoint", "ckpt"]).max_concurrency == 1


@pytest.mark.parametrize("value", ["2", "0", "many"])
def test_hf_refuses_any_other_concurrency(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["bench", "hf", "--checkpoint", "ckpt", "--max-concurrency", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--max-concurrency" in err and "one at a time" in err and "unrecognized" not in err


def test_hf_refuses_a_temperature_it_would_ignore(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["bench", "hf", "--checkpoint", "ckpt", "--temperature", "0.7"])
    assert args.run(args) == 2
    assert "greedy" in capsys.readouterr().err


def test_bad_values_fail_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["bench", "serve", "--mm-reuse", "2"])
    assert args.run(args) == 2
    assert "reuse" in capsys.readouterr().err


def test_compare_of_missing_files_fails(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = build_parser().parse_args(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert args.run(args) == 2


def test_an_unreachable_metrics_url_stops_serve_before_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:9/metrics"  # the discard port: nothing answers there
    args = build_parser().parse_args(
        ["bench", "serve", "--base-url", "http://127.0.0.1:9/v1", "--metrics-url", url, "--no-progress"]
    )
    assert args.metrics_url == [url]
    assert args.run(args) == 1
    err = capsys.readouterr().err
    assert f"cannot scrape the metrics URL {url}" in err and "Traceback" not in err
