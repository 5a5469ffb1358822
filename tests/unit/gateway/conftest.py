"""The gateway's domain (``Gateway`` over ``Pipeline`` and ``Sessions``) on fakes: a
``FakeDownstream`` instead of the gRPC clients, the in-memory session store instead of Redis."""

from __future__ import annotations

import pytest

from gateway.service import Gateway
from tests.support.fake_downstream import FakeDownstream, gateway_over


@pytest.fixture
def downstream() -> FakeDownstream:
    return FakeDownstream()


@pytest.fixture
def gateway(downstream: FakeDownstream) -> Gateway:
    """A ready gateway whose requests go to ``downstream``."""
    return gateway_over(downstream)
