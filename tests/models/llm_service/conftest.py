"""The engine tests' model: one tiny random Llama (vocabulary 300, byte-level tokens) per module."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.testing.engine import tiny_llama


@pytest.fixture(scope="module")
def hf_model() -> Any:
    return tiny_llama(vocab_size=300)
