"""parse_config: a frozen dataclass becomes a CLI; flags beat env beat defaults; errors exit 2."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tandem.serving.options import at_least, check_choices, opt, parse_config


@dataclass(frozen=True)
class Config:
    port: int = field(default=50051, metadata=opt("port to listen on", env="T_PORT"))
    model: str | None = field(default=None, metadata=opt("checkpoint folder or hub id", env="T_MODEL"))
    grace_seconds: float = field(default=10.0, metadata=opt("drain period", env="T_GRACE"))
    reflection: bool = field(default=True, metadata=opt("serve reflection", env="T_REFLECTION"))
    addresses: tuple[str, ...] = field(
        default=("a:1",), metadata=opt("upstreams, comma separated", env="T_ADDR")
    )
    device: str = field(default="auto", metadata=opt("where to run", choices=("auto", "cpu", "cuda")))
    host: str = "127.0.0.1"  # no metadata: not an option

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{self.port=} must be in 0..65535")


def parse(argv: list[str], env: dict[str, str] | None = None) -> Config:
    return parse_config(Config, argv, "test service", env=env or {})


def test_defaults() -> None:
    assert parse([]) == Config()


def test_environment_beats_defaults() -> None:
    env = {"T_PORT": "7000", "T_MODEL": "/m", "T_GRACE": "1.5", "T_REFLECTION": "off", "T_ADDR": "x:1, y:2"}
    config = parse([], env)
    assert config == Config(
        port=7000, model="/m", grace_seconds=1.5, reflection=False, addresses=("x:1", "y:2")
    )


def test_flags_beat_environment() -> None:
    env = {"T_PORT": "7000", "T_REFLECTION": "0", "T_ADDR": "x:1"}
    argv = ["--port", "7001", "--reflection", "--addresses", "z:3,w:4", "--device", "cpu"]
    config = parse(argv, env)
    assert (config.port, config.reflection, config.addresses, config.device) == (
        7001,
        True,
        ("z:3", "w:4"),
        "cpu",
    )
    assert parse(["--no-reflection"]).reflection is False


def test_help_lists_every_option_with_default_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--port", "--model", "--grace-seconds", "--reflection", "--addresses", "--device"):
        assert flag in out
    assert "T_PORT" in out and "50051" in out and "checkpoint folder or hub id" in out
    assert "--host" not in out


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "eighty"], {}, "--port"),
        (["--port", "70000"], {}, "must be in 0..65535"),
        (["--grace-seconds", "soon"], {}, "--grace-seconds"),
        (["--device", "tpu"], {}, "invalid choice"),
        (["--nonsense"], {}, "unrecognized arguments"),
        ([], {"T_PORT": "eighty"}, "T_PORT"),
        ([], {"T_REFLECTION": "maybe"}, "T_REFLECTION"),
    ],
)
def test_invalid_values_exit_2_with_a_clear_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv, env)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@dataclass(frozen=True)
class Grouped:
    model: str = field(default="m", metadata=opt("the model"))
    port: int = field(default=1, metadata=opt("the port", group="server"))
    prefix: str = field(default="t", metadata=opt("the key prefix", group="redis"))


def test_help_lists_grouped_options_after_the_services_own(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(Grouped, ["--help"], "grouped", env={})
    out = capsys.readouterr().out
    assert out.index("  --model") < out.index("server options:") < out.index("  --port")
    assert out.index("redis options:") < out.index("  --prefix")
    assert parse_config(Grouped, ["--port", "2", "--prefix", "p"], "grouped", env={}) == Grouped("m", 2, "p")


def test_at_least_names_the_first_field_below_its_minimum() -> None:
    at_least(Config(port=0), 0, "port", "grace_seconds")
    with pytest.raises(ValueError, match=r"grace_seconds=-1\.0 must be >= 0"):
        at_least(Config(grace_seconds=-1.0), 0, "port", "grace_seconds")


def test_check_choices_covers_configs_built_in_code() -> None:
    check_choices(Config(device="cuda"))
    with pytest.raises(ValueError, match="device='tpu' must be one of"):
        check_choices(Config(device="tpu"))
