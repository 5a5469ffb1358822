"""Frozen config dataclasses built once at the edge from CLI flags and environment variables.

Each service declares one frozen dataclass whose fields carry ``opt(...)`` metadata (help text,
environment variable, choices, ``--help`` section). ``parse_config`` turns it into an argparse
parser, so ``--help`` explains every option, its default and its variable, and values are
validated by the dataclass's ``__post_init__``. Nothing reads the environment at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def opt(
    help: str,
    *,
    env: str | None = None,
    choices: Sequence[str] | None = None,
    group: str | None = None,
    repeatable: bool = False,
) -> dict[str, Any]:
    """Field metadata: the ``--help`` text, an optional environment variable, choices, the
    ``--help`` section that lists the option (None: the service's own options) and, for a tuple
    field, whether its flag may be given several times (``--api-key a=x --api-key b=y``)."""
    return {"help": help, "env": env, "choices": choices, "group": group, "repeatable": repeatable}


class _Repeat(argparse.Action):
    """A repeatable tuple flag: the values of every use, which replace the default (env) ones."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest)
        kept = () if current is self.default else tuple(current)
        setattr(namespace, self.dest, (*kept, *values))


def at_least(config: object, minimum: float, *names: str) -> None:
    """Raise ``ValueError`` for the first field of ``names`` whose value is below ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{name}={value!r} must be >= {minimum}")


def check_choices(config: Any) -> None:
    """Raise ``ValueError`` for a field outside the ``choices`` of its metadata (flags are checked
    by argparse; this covers configs built in code)."""
    for field in dataclasses.fields(config):
        choices = field.metadata.get("choices")
        if choices is not None and getattr(config, field.name) not in choices:
            raise ValueError(f"{field.name}={getattr(config, field.name)!r} must be one of {tuple(choices)}")


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; other types unchanged."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _convert(tp: Any, raw: str) -> Any:
    base = _base_type(tp)
    if base is bool:
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if typing.get_origin(base) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return base(raw)


def _converter(tp: Any) -> Any:
    """An argparse ``type`` for ``tp``, named so that errors read "invalid int value"."""

    def convert(raw: str) -> Any:
        return _convert(tp, raw)

    convert.__name__ = getattr(_base_type(tp), "__name__", "value")
    return convert


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(cls: type[Any], description: str, env: Mapping[str, str]) -> argparse.ArgumentParser:
    """An argparse parser with one option per dataclass field, grouped by the fields' ``group``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sections: dict[str | None, Any] = {None: parser}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata:
            continue
        group = field.metadata.get("group")
        if group not in sections:
            sections[group] = parser.add_argument_group(f"{group} options")
        _add_option(parser, sections[group], field, hints[field.name], env)
    return parser


def _add_option(
    parser: argparse.ArgumentParser,
    section: Any,
    field: dataclasses.Field[Any],
    tp: Any,
    env: Mapping[str, str],
) -> None:
    """Add ``field``'s flag to ``section``; its default is the environment's value, if set."""
    meta = field.metadata
    default = field.default if field.default is not dataclasses.MISSING else None
    env_name = meta.get("env")
    if env_name and env_name in env:
        try:
            default = _convert(tp, env[env_name])
        except ValueError as exc:
            parser.error(f"environment variable {env_name}={env[env_name]!r}: {exc}")
    help_text = meta["help"] + f" (default: {default!r}"
    help_text += f"; env {env_name})" if env_name else ")"
    if _base_type(tp) is bool:
        section.add_argument(
            _flag(field.name), default=default, action=argparse.BooleanOptionalAction, help=help_text
        )
    else:
        section.add_argument(
            _flag(field.name),
            default=default,
            type=_converter(tp),
            choices=meta.get("choices"),
            help=help_text + (" (repeatable)" if meta.get("repeatable") else ""),
            metavar=field.name.upper(),
            **({"action": _Repeat} if meta.get("repeatable") else {}),
        )


def parse_config(
    cls: type[T], argv: Sequence[str] | None, description: str, env: Mapping[str, str] | None = None
) -> T:
    """Build ``cls`` from ``argv`` (flags win over environment variables over defaults)."""
    parser = build_parser(cls, description, os.environ if env is None else env)
    namespace = parser.parse_args(argv)
    try:
        return cls(**vars(namespace))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
