"""The model fingerprint: the namespace of the embedding cache.

Two workers agree on a fingerprint exactly when they would produce the same embedding for the
same bytes: same checkpoint identity (path or hub id and revision), same ``config.json``, same
processor settings, same normalisation version, and the same vision weights (the bytes of every
tensor under ``VISION_WEIGHT_PREFIXES``, so a fine-tuned vision tower saved in place changes
it). The language worker computes it the same way to validate the records it reads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open

from tandem.models.checkpoint import iter_tensor_names

# Bump when image normalisation (EXIF, mode conversion, compositing) changes its output.
NORMALISATION_VERSION = 1

# Checkpoint prefixes of vision towers and projectors, across supported families and layouts.
VISION_WEIGHT_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "visual.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
    "model.visual.",
    "image_newline",
    "model.image_newline",
    "model.vision_model.",
    "model.connector.",
)

_CONFIG_FILES = ("config.json", "preprocessor_config.json", "processor_config.json")


def fingerprint(path: Path, model: str, revision: str | None = None, settings: str = "") -> str:
    """32 hex digits identifying model, preprocessing and vision weights.

    ``settings`` carries serving options that change embeddings (e.g. pixel limits or dtype).
    """
    digest = hashlib.sha256()
    for part in (f"norm={NORMALISATION_VERSION}", f"model={model}", f"rev={revision or ''}", settings):
        digest.update(part.encode() + b"\0")
    for name in _CONFIG_FILES:
        file = path / name
        if file.exists():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    _hash_vision_tensors(path, digest)
    return digest.hexdigest()[:32]


def _hash_vision_tensors(path: Path, digest: hashlib._Hash) -> None:
    by_file: dict[Path, list[str]] = {}
    for file, name in iter_tensor_names(path):
        if name.startswith(VISION_WEIGHT_PREFIXES):
            by_file.setdefault(file, []).append(name)
    for file in sorted(by_file):
        with safe_open(file, framework="pt") as handle:
            for name in sorted(by_file[file]):
                tensor = handle.get_tensor(name).contiguous()
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
