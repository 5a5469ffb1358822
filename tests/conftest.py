"""Shared fixtures: a real redis-server per test session, and tiny checkpoints built once.

The tree is tiered, and each tier is a marker of the same name (``pytest -m unit``):
``unit/`` pure logic with fakes, ``models/`` adapters and the engine on tiny real checkpoints,
``system/`` real servers, processes and Redis. Inside a tier, one folder per package.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `tandem up` keeps sessions under $XDG_DATA_HOME/tandem (locked while it runs): one folder per
# test run, never the user's and never shared with a concurrent run.
_DATA_HOME = tempfile.TemporaryDirectory(prefix="tandem-test-data-")
os.environ["XDG_DATA_HOME"] = _DATA_HOME.name

TIERS = ("unit", "models", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier, the first folder below tests/."""
    for item in items:
        parts = Path(item.path).relative_to(Path(__file__).parent).parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[object]:
    """A private redis-server on loopback, stopped at the end of the session."""
    from tandem.redis_local import LocalRedis

    with LocalRedis() as server:
        yield server


@pytest.fixture
def private_redis() -> Iterator[object]:
    """A redis-server of this test's own, which it may stop, restart or freeze; stopped at its end."""
    from tandem.redis_local import LocalRedis

    with LocalRedis() as server:
        yield server


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
    """vision + llm + two gateways (gRPC and OpenAI HTTP) as real processes (support/client_stack.py)."""
    from tests.support.client_stack import start_stack

    log_dir = tmp_path_factory.mktemp("client-stack")
    with start_stack(checkpoint("llava"), redis_server.url, log_dir) as stack:
        yield stack
