"""The public id of a served model: a name, never where the weights sit on the server's disk.

``GetModelInfo``, ``GET /v1/models`` and the OpenAI ``model`` field use it. ``--served-model-name``
sets it; by default it is the last part of the model: a checkpoint folder's name
(``/models/llava-1.5-7b-hf`` -> ``llava-1.5-7b-hf``) or a hub id's name
(``Qwen/Qwen2-VL-2B-Instruct`` -> ``Qwen2-VL-2B-Instruct``). Tandem's shipped default model,
whose folder is just ``checkpoint``, is ``tandem-default``.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "tandem-default"


def served_model_name(model: str, served_name: str | None = None) -> str:
    """``served_name`` if given, else the last part of ``model`` (see the module docstring)."""
    if served_name:
        return served_name
    path = Path(model).expanduser()
    local = path.is_dir() or model.startswith((".", "/", "~"))
    if local and _is_default_model(path):
        return DEFAULT_MODEL_NAME
    if local:
        return path.resolve().name or model
    return model.rstrip("/").rsplit("/", 1)[-1] or model


def _is_default_model(path: Path) -> bool:
    from tandem.default_model import CHECKPOINT

    return path.resolve() == CHECKPOINT
