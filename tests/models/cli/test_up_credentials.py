"""``tandem up`` credentials: ``--api-key`` are the gateway's public keys; every run makes a random
internal token that the workers require and the gateway sends; both travel by environment, never
on a command line (which ``ps`` shows to every user)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tandem.cli import up as up_command
from tandem.cli.services import ConfigError
from tandem.serving.options import parse_config
from tests.models.cli.test_up_plan import fake_checkpoint, up_args


def _config(name: str, command: tuple[str, ...], env: dict[str, str]) -> object:
    return parse_config(up_command.config_class(name), list(command[3:]), name, env=env)


def test_keys_and_the_internal_token_go_by_environment(tmp_path: Path) -> None:
    args = up_args("--api-key", "alice=tok-alice", "--api-key", "bob=tok-bob")
    args.internal_token = "internal-of-this-run"
    model = str(fake_checkpoint(tmp_path, vision=True))
    workers = up_command.service_specs(args, model, True, "redis://127.0.0.1:1/0", tmp_path)
    gateway = up_command.gateway_spec(args, model, "redis://127.0.0.1:1/0", {"llm": 1, "vision": 2}, tmp_path)
    for spec in [*workers.values(), gateway]:
        assert not any("tok-" in part or "internal-of" in part for part in spec.command)
        assert spec.env["TANDEM_INTERNAL_TOKEN"] == "internal-of-this-run"
    assert gateway.env["TANDEM_API_KEYS"] == "alice=tok-alice,bob=tok-bob"
    public = _config("gateway", gateway.command, gateway.env)
    assert public.api_keys().tenants == {"alice", "bob"}  # type: ignore[attr-defined]
    assert public.downstream_token() == "internal-of-this-run"  # type: ignore[attr-defined]
    for name, spec in workers.items():
        env = {**spec.env, "TANDEM_AUTH_TOKEN": "tok-alice"}  # a public token in the environment
        keys = _config(name, spec.command, env).worker_keys()  # type: ignore[attr-defined]
        assert keys.tenant_of("Bearer internal-of-this-run") is not None
        assert keys.tenant_of("Bearer tok-alice") is None


def test_every_run_makes_its_own_internal_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens: list[str] = []

    def stop_before_starting(args: argparse.Namespace, *rest: object) -> None:
        tokens.append(args.internal_token)
        raise ConfigError("planned only")

    monkeypatch.setattr(up_command, "service_specs", stop_before_starting)
    model = str(fake_checkpoint(tmp_path, vision=False))
    for _ in range(2):
        args = up_args("--model", model, "--redis-url", "redis://127.0.0.1:1/0", "--log-dir", str(tmp_path))
        assert up_command.run(args) == 2
    assert len(tokens) == 2 and tokens[0] != tokens[1] and min(map(len, tokens)) >= 32


def test_a_malformed_api_key_stops_up_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert up_command.run(up_args("--api-key", "alice")) == 2
    assert "NAME=TOKEN" in capsys.readouterr().err
