"""The readiness gate: what a server's ``grpc.health.v1`` service reports.

Every Tandem server has one ``Readiness``, driven the same way by every service (see
``tandem.serving.app``):

- ``hold()`` when the server starts listening: NOT_SERVING (weights loading, warming up);
- ``open()`` once the weights are loaded and warmed up: SERVING;
- ``close()`` on SIGTERM/SIGINT, before the drain: NOT_SERVING for good. A closed gate does not
  open again, so a warm-up that ends during a drain cannot report a stopping server as ready.

The status is set for the overall server (``""``) and for each named service.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

State = Literal["holding", "serving", "closed"]


class Readiness:
    """NOT_SERVING -> SERVING (``open``) -> NOT_SERVING for good (``close``)."""

    def __init__(self, service_names: Sequence[str]):
        self.service_names = list(service_names)
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lacks .aio
        self.state: State = "holding"

    async def hold(self) -> None:
        """NOT_SERVING until ``open`` (the servicer answers SERVING for ``""`` until told)."""
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def open(self) -> None:
        """SERVING, unless the gate was closed."""
        if self.state == "closed":
            log.info("not reporting SERVING: the server is draining")
            return
        self.state = "serving"
        await self._set(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s", ", ".join(self.service_names))

    async def close(self) -> None:
        """NOT_SERVING for good; health watchers are told at once."""
        self.state = "closed"
        await self.servicer.enter_graceful_shutdown()

    async def _set(self, status: int) -> None:
        for name in ["", *self.service_names]:
            await self.servicer.set(name, status)
