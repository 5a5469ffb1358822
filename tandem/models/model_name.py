"""The public id of a served model: a name, never where the weights sit on the server's disk.

``GetModelInfo``, ``GET /v1/models`` and the OpenAI ``model`` field use it. A checkpoint folder is
named by its last path component (``/models/llava-1.5-7b-hf`` -> ``llava-1.5-7b-hf``); a hub id
(``Qwen/Qwen2-VL-2B-Instruct``) is public already and stays whole. This is the one seam a
``--served-model-name`` option plugs into: a name given there replaces this default.
"""

from __future__ import annotations

from pathlib import Path


def served_model_name(model: str, served_name: str | None = None) -> str:
    """``served_name`` if given, else the folder name of a local checkpoint, else the hub id."""
    if served_name:
        return served_name
    path = Path(model).expanduser()
    if path.is_dir() or model.startswith((".", "/", "~")):
        return path.resolve().name or model
    return model
