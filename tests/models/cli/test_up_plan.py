"""``tandem up`` planning: which services run with which flags (the services' own parsers agree)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.cli import build_parser
from tandem.cli import up as up_command
from tandem.serving.options import parse_config
from tests.support import ROOT


def up_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["up", *argv])


def fake_checkpoint(tmp_path: Path, vision: bool) -> Path:
    path = tmp_path / ("vlm" if vision else "text")
    path.mkdir()
    config: dict[str, object] = {
        "architectures": ["LlavaForConditionalGeneration" if vision else "LlamaForCausalLM"]
    }
    if vision:
        config["vision_config"] = {"model_type": "clip_vision_model"}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_vlm_detection_reads_config_json(tmp_path: Path) -> None:
    assert up_command.is_vlm(str(fake_checkpoint(tmp_path, vision=True)))
    assert not up_command.is_vlm(str(fake_checkpoint(tmp_path, vision=False)))
    with pytest.raises(FileNotFoundError):
        up_command.is_vlm(str(tmp_path / "nowhere"))


def test_config_argv_builds_flags_for_known_fields() -> None:
    @dataclasses.dataclass(frozen=True)
    class Config:
        port: int = 0
        reflection: bool = True
        addresses: tuple[str, ...] = ()
        model: str = ""

    argv = up_command.config_argv(
        Config, {"port": 5, "reflection": False, "addresses": ["a:1", "b:2"], "model": None, "unknown": 1}
    )
    assert argv == ["--port", "5", "--no-reflection", "--addresses", "a:1,b:2"]
    with pytest.raises(SystemExit, match="no field"):
        up_command.config_argv(Config, {}, required=("http_port",))


def _parse_spec(name: str, command: tuple[str, ...]) -> object:
    """Feed the flags ``tandem up`` built to the service's own parser."""
    assert command[1:3] == ("-m", up_command.CONFIGS[name][0])
    return parse_config(up_command.config_class(name), list(command[3:]), name, env={})


@pytest.mark.parametrize("vision", [True, False])
def test_worker_flags_are_accepted_by_the_workers(
    tmp_path: Path, vision: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_CACHE_PREFIX", "shared")
    model = str(fake_checkpoint(tmp_path, vision))
    args = up_args("--device", "cpu", "--log-level", "DEBUG")
    specs = up_command.service_specs(args, model, vision, "redis://127.0.0.1:1/0", tmp_path)
    assert sorted(specs) == (["llm", "vision"] if vision else ["llm"])
    for name, spec in specs.items():
        config = _parse_spec(name, spec.command)
        assert config.model == model  # type: ignore[attr-defined]
        assert config.redis_url == "redis://127.0.0.1:1/0"  # type: ignore[attr-defined]
        assert config.port == 0 and config.host == "127.0.0.1"  # type: ignore[attr-defined]
        assert config.port_file == str(spec.port_file)  # type: ignore[attr-defined]
        assert config.device == "cpu" and config.log_level == "DEBUG"  # type: ignore[attr-defined]
        assert config.cache_prefix == "shared"  # type: ignore[attr-defined]  # passed as a flag to every service


@pytest.mark.parametrize("vision", [True, False])
def test_gateway_flags_are_accepted_by_the_gateway(tmp_path: Path, vision: bool) -> None:
    args = up_args("--grpc-port", "0", "--host", "0.0.0.0")
    ports = {"llm": 7001, **({"vision": 7002} if vision else {})}
    spec = up_command.gateway_spec(args, "/m", "redis://127.0.0.1:1/0", ports, tmp_path)
    config = _parse_spec("gateway", spec.command)
    assert tuple(config.llm_addresses) == ("127.0.0.1:7001",)  # type: ignore[attr-defined]
    assert tuple(config.vision_addresses) == (("127.0.0.1:7002",) if vision else ())  # type: ignore[attr-defined]
    assert (config.host, config.port) == ("0.0.0.0", 0)  # type: ignore[attr-defined]
    assert config.cache_prefix == "tandem"  # type: ignore[attr-defined]


def test_defaults_of_up() -> None:
    args = up_args()
    assert (args.grpc_port, args.http_port, args.device, args.host) == (50051, 8000, "auto", "127.0.0.1")
    assert args.redis_url is None


def test_importing_tandem_and_its_cli_is_light() -> None:
    """``import tandem`` and the ``tandem`` command's module load neither torch nor transformers."""
    code = (
        "import sys, tandem, tandem.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'PIL') if m in sys.modules))"
    )
    root = ROOT
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": f"{root}:{root / 'protos'}"},
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_default_model_is_the_shipped_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tandem.default_model

    assert up_command.default_model() == str(tandem.default_model.CHECKPOINT)
    assert "Tandem's default model" in capsys.readouterr().out
    monkeypatch.setattr(tandem.default_model, "CHECKPOINT", tmp_path / "missing")
    with pytest.raises(SystemExit, match="default model is missing"):
        up_command.default_model()


def test_the_cli_imports_no_test_tooling() -> None:
    """``tandem`` commands never import ``tandem.testing`` (dev tooling, not in the wheel)."""
    for path in (Path(up_command.__file__).parent).glob("*.py"):
        assert "tandem.testing" not in path.read_text(), path.name
