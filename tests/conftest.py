"""Shared fixtures: a real redis-server per test session, and tiny checkpoints built once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[object]:
    """A private redis-server on loopback, stopped at the end of the session."""
    from tandem.redis_local import LocalRedis

    server = LocalRedis().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def checkpoint(checkpoint_root: Path):  # type: ignore[no-untyped-def]
    """``checkpoint(kind)`` -> path of a tiny saved checkpoint, built once per session."""
    from tandem.testing.checkpoints import ensure_checkpoint

    def build(kind: str) -> Path:
        return ensure_checkpoint(kind, checkpoint_root)

    return build


@pytest.fixture(scope="session")
def client_stack(checkpoint, redis_server, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """vision + llm + two gateways (gRPC and OpenAI HTTP) as real processes; see tests/client_stack.py."""
    from tests.client_stack import start_stack

    log_dir = tmp_path_factory.mktemp("client-stack")
    with start_stack(checkpoint("llava"), redis_server.url, log_dir) as stack:
        yield stack
