"""One vision service process: the gRPC server, the encoder and their lifecycle.

``VisionApp`` runs ``ServiceApp``'s lifecycle, the same in every service: the server starts first
(health NOT_SERVING; calls get UNAVAILABLE), ``warmup`` loads the vision tower and projector,
connects the cache and runs a batched forward, and only then the server reports SERVING. On
SIGTERM (or ``stop``) the server drains, then ``shutdown`` stops the encoder thread, the
preprocessing pool and the Redis client.
"""

from __future__ import annotations

from tandem.errors import Unavailable
from tandem.metrics import Metrics
from tandem.serving.app import ServiceApp
from tandem.serving.bootstrap import GrpcServer
from tandem.serving.tracing import Tracing
from vision_service.config import VisionConfig
from vision_service.service import VisionService
from vision_service.servicer import SERVICE_NAME, VisionServicer


class VisionApp(ServiceApp):
    """The process: see the module docstring for the lifecycle."""

    def __init__(self, config: VisionConfig, metrics: Metrics | None = None, tracing: Tracing | None = None):
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics.for_service("vision")
        self._service: VisionService | None = None
        self.servicer = VisionServicer()
        self.server = GrpcServer(
            config, [self.servicer.register], [SERVICE_NAME], self.metrics, tracing, config.worker_keys()
        )

    @property
    def service(self) -> VisionService:
        """The loaded domain service; Unavailable until ``warmup`` has returned."""
        if self._service is None:
            raise Unavailable("the vision model is still loading; retry shortly")
        return self._service

    async def warmup(self) -> None:
        """Load the vision half, connect the cache and warm up; then the servicer serves."""
        self._service = await VisionService.start(self.config, self.metrics)
        self.servicer.attach(self._service)

    async def shutdown(self) -> None:
        if self._service is not None:
            await self._service.close()
