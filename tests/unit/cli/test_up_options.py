"""``tandem up``'s worker options (``--llm-*``, ``--vision-*``) and its checks before starting:
options reach the worker's command line, bad ones and missing models fail at once, in one line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tandem.cli import build_parser, main
from tandem.cli import up as up_command
from tandem.cli.services import ConfigError, check_argv, worker_fields
from tandem.serving.options import parse_config

REDIS = "redis://127.0.0.1:1/0"


def up_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["up", "--device", "cpu", *argv])


def fake_checkpoint(tmp_path: Path, vision: bool = True) -> str:
    path = tmp_path / ("vlm" if vision else "text")
    path.mkdir()
    config: dict[str, object] = {"architectures": ["LlavaForConditionalGeneration"]}
    if vision:
        config["vision_config"] = {"model_type": "clip_vision_model"}
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def worker_config(spec: object, name: str) -> object:
    """The config the worker builds from the command line ``tandem up`` planned for it."""
    command = spec.command  # type: ignore[attr-defined]
    return parse_config(up_command.config_class(name), list(command[3:]), name, env={})


def test_worker_options_reach_the_worker_command_line(tmp_path: Path) -> None:
    args = up_args(
        "--llm-max-batch-size", "8",
        "--llm-context-length", "1024",
        "--llm-dtype", "bfloat16",
        "--llm-session-cache-entries", "0",
        "--llm-max-prefill-tokens", "256",
        "--vision-max-batch", "4",
        "--vision-dtype", "float16",
    )  # fmt: skip
    specs = up_command.service_specs(args, fake_checkpoint(tmp_path), True, REDIS, tmp_path)
    llm_command = " ".join(specs["llm"].command)
    for flag in ("--max-batch-size 8", "--context-length 1024", "--dtype bfloat16"):
        assert flag in llm_command
    assert "--max-prefill-tokens 256" in llm_command and "--session-cache-entries 0" in llm_command
    llm = worker_config(specs["llm"], "llm")
    assert (llm.max_batch_size, llm.context_length, llm.dtype) == (8, 1024, "bfloat16")  # type: ignore[attr-defined]
    assert (llm.session_cache_entries, llm.max_prefill_tokens) == (0, 256)  # type: ignore[attr-defined]
    vision = worker_config(specs["vision"], "vision")
    assert (vision.max_batch, vision.dtype) == (4, "float16")  # type: ignore[attr-defined]


def test_unset_worker_options_are_left_to_the_worker(tmp_path: Path) -> None:
    specs = up_command.service_specs(up_args(), fake_checkpoint(tmp_path), True, REDIS, tmp_path)
    assert "--max-batch-size" not in specs["llm"].command  # the worker's default or its env var
    assert worker_config(specs["llm"], "llm").max_batch_size == 16  # type: ignore[attr-defined]


def test_every_own_worker_option_is_passed_through() -> None:
    """What a worker lists as its own options (not server/redis/model/device) is a tandem up flag."""
    options = set(vars(up_args()))  # every destination, given or not
    for service in ("llm", "vision"):
        names = {f.name for f in worker_fields(up_command.config_class(service))}
        assert {"dtype"} <= names and not names & {"model", "device", "port", "host", "redis_url"}
        assert {f"{service}_{name}" for name in names} <= options


def test_grace_period_goes_to_every_service(tmp_path: Path) -> None:
    args = up_args("--grace-seconds", "1.5")
    specs = up_command.service_specs(args, fake_checkpoint(tmp_path), True, REDIS, tmp_path)
    specs["gateway"] = up_command.gateway_spec(args, "/m", REDIS, {"llm": 1, "vision": 2}, tmp_path)
    for name, spec in specs.items():
        assert worker_config(spec, name).grace_seconds == 1.5  # type: ignore[attr-defined]


def test_the_gateway_can_run_below_the_workers_priority(tmp_path: Path) -> None:
    ports = {"llm": 1, "vision": 2}
    args = up_args("--gateway-nice", "10")
    specs = up_command.service_specs(args, fake_checkpoint(tmp_path), True, REDIS, tmp_path)
    specs["gateway"] = up_command.gateway_spec(args, "/m", REDIS, ports, tmp_path)
    assert {name: worker_config(spec, name).nice for name, spec in specs.items()} == {  # type: ignore[attr-defined]
        "llm": 0,
        "vision": 0,
        "gateway": 10,
    }
    same = up_command.gateway_spec(up_args(), "/m", REDIS, ports, tmp_path)
    assert worker_config(same, "gateway").nice == 0  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        up_args("--gateway-nice", "20")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--llm-max-batch-size", "x"], "--llm-max-batch-size: invalid int value: 'x'"),
        (["--llm-max-batch-size", "0"], "llm worker: max_batch_size=0 must be >= 1"),
        (["--vision-max-pending-images", "1"], "vision worker: self.max_pending_images=1 must be >="),
    ],
)
def test_a_bad_worker_option_fails_before_anything_starts(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as failed:
        up_command.service_specs(up_args(*argv), fake_checkpoint(tmp_path), True, REDIS, tmp_path)
    assert message in str(failed.value) and "\n" not in str(failed.value)


def test_check_argv_refuses_what_the_worker_would_refuse() -> None:
    check_argv("llm", ["--model", "m", "--max-batch-size", "4"])
    with pytest.raises(ConfigError, match="does not accept --frobnicate"):
        check_argv("llm", ["--model", "m", "--frobnicate", "1"])


def test_run_exits_2_with_one_line_for_a_bad_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = fake_checkpoint(tmp_path)
    assert up_command.run(up_args("--model", model, "--llm-max-batch-size", "0")) == 2
    err = capsys.readouterr().err
    assert err == "tandem up: llm worker: max_batch_size=0 must be >= 1\n"


def test_a_mistyped_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["up", "--llm-max-batch-sise", "8"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --llm-max-batch-sise" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["up", "--llm-dtype", "float64"])
    assert exited.value.code == 2
    assert "invalid choice: 'float64'" in capsys.readouterr().err


def test_vision_options_for_a_text_only_model_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = up_args("--vision-max-batch", "4")
    specs = up_command.service_specs(args, fake_checkpoint(tmp_path, vision=False), False, REDIS, tmp_path)
    assert sorted(specs) == ["llm"]
    assert "--vision-max-batch ignored: the model is text-only" in capsys.readouterr().err


def test_a_missing_model_is_a_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as failed:
        up_command.check_model(str(tmp_path / "missing"))
    assert "\n" not in str(failed.value)
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        up_command.check_model(str(tmp_path))


def test_no_embedding_cache_leaves_both_workers_without_redis(tmp_path: Path) -> None:
    checkpoint = fake_checkpoint(tmp_path)
    cached = up_command.service_specs(up_args(), checkpoint, True, REDIS, tmp_path)
    plain = up_command.service_specs(up_args("--no-embedding-cache"), checkpoint, True, REDIS, tmp_path)
    for name in ("llm", "vision"):
        assert worker_config(cached[name], name).redis_url == REDIS  # type: ignore[attr-defined]
        assert worker_config(plain[name], name).redis_url == ""  # type: ignore[attr-defined]
