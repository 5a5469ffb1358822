"""Find a checkpoint and load only the tensors one worker needs.

``resolve`` accepts a local folder or a Hugging Face hub id (downloaded or taken from the local
hub cache by ``huggingface_hub``; nothing in Tandem's own tests downloads). ``load_subset``
fills a module built from the config with the tensors under some checkpoint prefixes, reading
them lazily from the safetensors files, so a worker never materialises the other half of the
model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

log = logging.getLogger(__name__)

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def resolve(model: str, revision: str | None = None) -> Path:
    """Local folder of ``model`` (a path, or a hub id fetched/cached by huggingface_hub).

    ``FileNotFoundError``, with a one-line message, when it is neither: no such folder, not a
    valid hub id, no such (or a gated) repository or revision, or the hub unreachable and the id
    not in the local cache.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise FileNotFoundError(f"model path {model!r} is a file, not a checkpoint folder")
    if model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path {model!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=_HUB_PATTERNS))
    except (OSError, ValueError) as exc:  # the hub's errors, network errors included
        raise FileNotFoundError(_hub_failure(model, revision, exc)) from exc


def _hub_failure(model: str, revision: str | None, exc: Exception) -> str:
    """One line saying why ``model`` could not be had from the Hugging Face hub."""
    from huggingface_hub import errors

    name = f"model {model!r}"
    if isinstance(exc, errors.HFValidationError):
        return f"{name} is neither a checkpoint folder nor a valid Hugging Face hub id"
    if isinstance(exc, errors.GatedRepoError):
        return f"{name} is gated on the Hugging Face hub: accept its terms there and log in (`hf auth login`)"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (
            f"{name} is neither a checkpoint folder nor a Hugging Face hub repository "
            "(a private one needs `hf auth login`)"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"{name} has no revision {revision!r} on the Hugging Face hub"
    if isinstance(exc, errors.LocalEntryNotFoundError):
        return (
            f"{name} is not a checkpoint folder nor in the local Hugging Face cache, and the hub "
            "cannot be reached (offline?)"
        )
    reason = str(exc).strip().splitlines() or [type(exc).__name__]
    return f"{name}: cannot fetch it from the Hugging Face hub: {reason[0]}"


def read_config(path: Path) -> dict[str, object]:
    """The raw ``config.json`` of a checkpoint."""
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json; is it a Hugging Face checkpoint?")
    return dict(json.loads(config_file.read_text()))


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint (sharded or not)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no *.safetensors weights (pickled .bin weights are not loaded)")
    return files


def iter_tensor_names(path: Path) -> Iterator[tuple[Path, str]]:
    """(file, tensor name) for every tensor in the checkpoint."""
    for file in weight_files(path):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield file, name


def _rename(name: str, prefixes: Mapping[str, str]) -> str | None:
    for source, target in prefixes.items():
        if name.startswith(source):
            return target + name[len(source) :]
    return None


def load_subset(
    path: Path, module: torch.nn.Module, prefixes: Mapping[str, str], dtype: torch.dtype | None = None
) -> None:
    """Fill ``module`` from the checkpoint tensors whose names start with a key of ``prefixes``.

    ``prefixes`` maps a checkpoint prefix to the module's own prefix (several checkpoint layouts,
    e.g. old and new transformers names, may map to the same target). Every parameter and
    persistent buffer of ``module`` must be found, except tied weights, or ``ValueError`` says
    which are missing.
    """
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for file, name in iter_tensor_names(path):
        target = _rename(name, prefixes)
        if target is not None:
            by_file.setdefault(file, []).append((name, target))
    for file, names in by_file.items():
        with safe_open(file, framework="pt") as handle:
            for name, target in names:
                tensor = handle.get_tensor(name)
                state[target] = (
                    tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
                )
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not _is_tied(module, m)]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} tensors, e.g. {missing[:3]}")
    if unexpected:
        log.debug("ignored %d unexpected tensors, e.g. %s", len(unexpected), unexpected[:3])


def _is_tied(module: torch.nn.Module, name: str) -> bool:
    tied = getattr(module, "_tied_weights_keys", None) or {}
    return name in tied


def materialize(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    """Move a loaded module to its device and dtype and put it in eval mode."""
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)
