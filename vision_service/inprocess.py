"""A vision server inside the current event loop, for tests, benchmarks and ``tandem`` demos."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tandem.metrics import Metrics
from tandem.serving.bootstrap import GrpcServer
from tandem.serving.tracing import Tracing
from vision_service.app import VisionApp
from vision_service.config import VisionConfig
from vision_service.service import VisionService


@dataclass(frozen=True)
class RunningVision:
    """A started in-process server: its address, domain service and gRPC server."""

    address: str
    service: VisionService
    server: GrpcServer


@contextlib.asynccontextmanager
async def running_vision(
    config: VisionConfig, metrics: Metrics | None = None, tracing: Tracing | None = None
) -> AsyncIterator[RunningVision]:
    """Load, warm up and serve ``config`` (port 0 = a free port); drained and closed on exit."""
    app = VisionApp(config, metrics, tracing)
    try:
        port = await app.start()
        yield RunningVision(f"{config.host}:{port}", app.service, app.server)
    finally:
        await app.stop()
