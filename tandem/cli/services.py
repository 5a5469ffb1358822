"""The services ``tandem up`` runs: their config classes, flags built from them, and the
worker options passed through.

Every option a worker declares in its own section of ``--help`` (the fields of ``LlmConfig``
and ``VisionConfig`` outside the shared "server" and "redis" sections: batch sizes, context
length, dtype, caches, image limits) is also a ``tandem up`` flag, named after the worker:
``tandem up --llm-max-batch-size 8`` runs ``python -m llm_service ... --max-batch-size 8``
(``--served-model-name``, ``--chat-template`` and ``--engine`` are also taken without the ``llm-``
prefix).
``tandem up`` sets the model, revision and device itself, so those are not repeated. Before
anything starts, each worker's command line goes through the worker's own parser and config
class (``check_argv``), so a bad value fails at once, with the worker's own message.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from tandem.serving.options import build_parser

CONFIGS = {
    "vision": ("vision_service", "vision_service.config", "VisionConfig"),
    "llm": ("llm_service", "llm_service.config", "LlmConfig"),
    "gateway": ("gateway", "gateway.config", "GatewayConfig"),
}
WORKERS = {"llm": "language worker", "vision": "vision worker"}
MANAGED = frozenset({"model", "revision", "device"})  # tandem up's own --model and --device
# Worker options that ``tandem up`` also takes under a short name (as vLLM spells them).
ALIASES = {
    "llm_served_model_name": "--served-model-name",
    "llm_chat_template": "--chat-template",
    "llm_engine": "--engine",
}


class ConfigError(Exception):
    """A problem found before anything starts (a bad option, a missing model): one line, exit 2."""


def config_class(service: str) -> type[Any]:
    """The config dataclass of ``service``; a clear error when the package is missing."""
    _, module_name, class_name = CONFIGS[service]
    try:
        return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"tandem up: cannot load {module_name}.{class_name}: {exc}") from exc


def config_argv(config: type[Any], values: Mapping[str, Any], required: tuple[str, ...] = ()) -> list[str]:
    """Flags for the fields of ``config`` named in ``values`` (others are left out; None skipped)."""
    fields = {f.name for f in dataclasses.fields(config)}
    missing = [name for name in required if name not in fields]
    if missing:
        raise SystemExit(f"tandem up: {config.__name__} has no field {missing}; cannot configure it")
    argv: list[str] = []
    for name, value in values.items():
        if name not in fields or value is None:
            continue
        flag = _flag(name)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def worker_fields(config: type[Any]) -> list[dataclasses.Field[Any]]:
    """The fields of a worker's config that ``tandem up`` passes through."""
    return [
        f
        for f in dataclasses.fields(config)
        if "help" in f.metadata and f.metadata.get("group") is None and f.name not in MANAGED
    ]


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """One ``--<worker>-<flag>`` per pass-through field of each worker (skipped if not installed)."""
    for service, title in WORKERS.items():
        try:
            config = config_class(service)
        except SystemExit:
            continue
        section = parser.add_argument_group(
            f"{title} options",
            f"passed to `python -m {CONFIGS[service][0]}` without the `{service}-` prefix\n"
            "(unset: the worker's default, or its environment variable)",
        )
        hints = typing.get_type_hints(config)
        for field in worker_fields(config):
            _add_worker_option(section, service, field, hints[field.name])


def _add_worker_option(section: Any, service: str, field: dataclasses.Field[Any], tp: Any) -> None:
    help_text = f"{field.metadata['help']} (worker default: {field.default!r})".replace("%", "%%")
    flag, dest = f"--{service}-{field.name.replace('_', '-')}", f"{service}_{field.name}"
    flags = (flag, ALIASES[dest]) if dest in ALIASES else (flag,)
    if tp is bool:
        section.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, help=help_text)
        return
    metavar = field.name.upper()
    choices = field.metadata.get("choices")
    section.add_argument(*flags, dest=dest, metavar=metavar, choices=choices, help=help_text)


def worker_argv(args: argparse.Namespace, service: str) -> list[str]:
    """The pass-through flags given for ``service`` (``--max-batch-size 8`` for
    ``--llm-max-batch-size 8``), as the worker spells them."""
    config = config_class(service)
    values = {f.name: getattr(args, f"{service}_{f.name}", None) for f in worker_fields(config)}
    return config_argv(config, values)


def given_worker_options(args: argparse.Namespace, service: str) -> list[str]:
    """The ``tandem up`` flags given for ``service`` (to say they were ignored)."""
    return [
        f"--{service}-{f.name.replace('_', '-')}"
        for f in worker_fields(config_class(service))
        if getattr(args, f"{service}_{f.name}", None) is not None
    ]


def check_argv(service: str, argv: Sequence[str]) -> None:
    """Parse ``argv`` as the worker will (its own parser and config class, this environment);
    ``ConfigError`` with the worker's message when it would refuse it."""
    config = config_class(service)
    parser = build_parser(config, f"python -m {CONFIGS[service][0]}", os.environ)
    parser.exit_on_error = False
    try:
        namespace, unknown = parser.parse_known_args(list(argv))
        if unknown:
            raise ConfigError(f"{service} worker does not accept {' '.join(unknown)}")
        config(**vars(namespace))
    except argparse.ArgumentError as exc:
        flag = (exc.argument_name or "").split("/")[0]
        raise ConfigError(f"--{service}-{flag.removeprefix('--')}: {exc.message}") from exc
    except ValueError as exc:
        raise ConfigError(f"{service} worker: {exc}") from exc
