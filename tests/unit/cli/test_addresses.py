"""``TANDEM_ADDRESS`` and ``TANDEM_BASE_URL``: where the client commands and the Python client go
when given no address, and what ``tandem up`` and the README tell users to set."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tandem.cli import build_parser
from tandem.cli import up as up_command
from tandem.cli.remote import open_pipeline
from tandem.client import AsyncPipeline, Pipeline, pipeline
from tandem.client.channel import DEFAULT_ADDRESS, default_address
from tests.support import ROOT


@pytest.fixture
def address_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("TANDEM_ADDRESS", "gateway.example:7000")
    return monkeypatch


def test_default_address_is_the_variable_else_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_ADDRESS", raising=False)
    assert default_address() == DEFAULT_ADDRESS == "localhost:50051"
    assert default_address({"TANDEM_ADDRESS": " gw:1 "}) == "gw:1"
    assert default_address({"TANDEM_ADDRESS": "  "}) == DEFAULT_ADDRESS


def test_python_clients_use_the_variable_when_given_no_address(address_env: pytest.MonkeyPatch) -> None:
    assert AsyncPipeline().options.address == "gateway.example:7000"
    with pipeline() as pipe:
        assert pipe.aio.options.address == "gateway.example:7000"
    with Pipeline("explicit:1") as pipe:
        assert pipe.aio.options.address == "explicit:1"
    with pytest.raises(ValueError, match="address"):
        AsyncPipeline("")  # an explicit empty address is still an error, not the default


def test_python_clients_default_stays_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_ADDRESS", raising=False)
    with pipeline() as pipe:
        assert pipe.aio.options.address == "localhost:50051"


@pytest.mark.parametrize("command", [["generate", "hi"], ["chat"]])
def test_client_commands_use_the_variable(address_env: pytest.MonkeyPatch, command: list[str]) -> None:
    pipe, _ = open_pipeline(build_parser().parse_args(command))
    with pipe:
        assert pipe.aio.options.address == "gateway.example:7000"
    pipe, _ = open_pipeline(build_parser().parse_args([*command, "--address", "flag:2"]))
    with pipe:
        assert pipe.aio.options.address == "flag:2"  # the flag wins


def test_client_commands_document_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("generate", "chat"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert "$TANDEM_ADDRESS" in capsys.readouterr().out


def test_up_prints_both_variables_for_its_ports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gateway.http-port").write_text("8123")
    args = build_parser().parse_args(["up", "--grpc-port", "0", "--http-port", "0"])
    up_command._print_ready(args, 50999, "redis://127.0.0.1:1/0", tmp_path, vlm=True)
    out = capsys.readouterr().out
    assert "export TANDEM_ADDRESS=127.0.0.1:50999 TANDEM_BASE_URL=http://127.0.0.1:8123/v1" in out
    off = argparse.Namespace(**{**vars(args), "http_port": -1})
    up_command._print_ready(off, 50999, "redis://127.0.0.1:1/0", tmp_path, vlm=True)
    assert re.search(r"export TANDEM_ADDRESS=127\.0\.0\.1:50999\n", capsys.readouterr().out)


def test_readme_snippets_name_the_variables() -> None:
    readme = (ROOT / "README.md").read_text()
    assert 'OpenAI(base_url=os.environ.get("TANDEM_BASE_URL", "http://127.0.0.1:8000/v1")' in readme
    assert "pipe = pipeline()  # $TANDEM_ADDRESS, else localhost:50051" in readme
    for variable in ("TANDEM_ADDRESS", "TANDEM_BASE_URL"):
        assert f"| `{variable}` |" in readme  # in the configuration table
