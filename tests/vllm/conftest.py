"""Fixtures of the vLLM-engine tests (run in the vLLM environment: ``bash .ci/vllm``).

Every test module here that needs vLLM skips itself when vLLM is not installed
(``pytest.importorskip``), so the main suite stays green without it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vllm.checkpoints import vllm_checkpoint as build


@pytest.fixture(scope="session")
def vllm_checkpoint(checkpoint_root: Path) -> Callable[[str], Path]:
    """``vllm_checkpoint(kind)`` -> a tiny checkpoint vLLM's CPU build runs (checkpoints.py)."""

    def make(kind: str) -> Path:
        return build(kind, checkpoint_root)

    return make
