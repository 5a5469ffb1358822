"""``tandem up --model``: the family it detected, printed at start; an unservable model stops it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.cli import build_parser
from tandem.cli import up as up_command
from tandem.cli.model_family import ModelFamily, detect_family
from tandem.cli.services import ConfigError, worker_argv


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("gemma", "GemmaForCausalLM (adapter TextAdapter, text-only)"),
        ("qwen3", "Qwen3ForCausalLM (adapter TextAdapter, text-only)"),
        ("llava", "LlavaForConditionalGeneration (adapter LlavaAdapter, VLM)"),
    ],
)
def test_the_detected_family_names_architecture_adapter_and_kind(
    checkpoint, kind: str, expected: str
) -> None:  # type: ignore[no-untyped-def]
    family = detect_family(str(checkpoint(kind)))
    assert isinstance(family, ModelFamily) and str(family) == expected


def test_an_unservable_model_is_a_config_error_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(ConfigError, match=r"unsupported architecture 'T5Model' \(not a \*ForCausalLM"):
        detect_family(str(tmp_path))


def test_up_prints_the_family_before_starting(
    checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    class Stop(Exception):
        pass

    def stop(*args: object) -> None:
        raise Stop

    monkeypatch.setattr(up_command.embedded_redis.RedisRoles, "start", stop, raising=False)
    args = build_parser().parse_args(
        [
            "up",
            "--model",
            str(checkpoint("phi3")),
            "--redis-url",
            "redis://127.0.0.1:1/0",
            "--log-dir",
            str(tmp_path),
        ]
    )
    monkeypatch.setattr(up_command, "_run_services", stop)
    with pytest.raises(Stop):
        up_command.run(args)
    out = capsys.readouterr().out
    assert "model family: Phi3ForCausalLM (adapter TextAdapter, text-only)" in out


def test_served_name_and_chat_template_have_short_flags() -> None:
    args = build_parser().parse_args(["up", "--served-model-name", "mine", "--chat-template", "t.jinja"])
    assert worker_argv(args, "llm") == ["--served-model-name", "mine", "--chat-template", "t.jinja"]
