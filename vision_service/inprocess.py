"""A vision server inside the current event loop, for tests, benchmarks and ``tandem`` demos."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tandem.metrics import Metrics
from tandem.serving.bootstrap import GrpcServer, ServerOptions
from vision_service.config import VisionConfig
from vision_service.service import VisionService
from vision_service.servicer import SERVICE_NAME, VisionServicer


@dataclass(frozen=True)
class RunningVision:
    """A started in-process server: its address, domain service and gRPC server."""

    address: str
    service: VisionService
    server: GrpcServer


@contextlib.asynccontextmanager
async def running_vision(
    config: VisionConfig, metrics: Metrics | None = None
) -> AsyncIterator[RunningVision]:
    """Load, warm up and serve ``config`` (port 0 = a free port); drained and closed on exit."""
    service = await VisionService.start(config, metrics)
    try:
        servicer = VisionServicer(service)
        server = GrpcServer(ServerOptions.from_config(config), [servicer.register], [SERVICE_NAME])
        await server.start()
        try:
            await server.set_serving()
            yield RunningVision(f"{config.host}:{server.port}", service, server)
        finally:
            await server.drain()
    finally:
        await service.close()
