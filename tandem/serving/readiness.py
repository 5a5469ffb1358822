"""The readiness gate: what a server's ``grpc.health.v1`` service reports.

Every Tandem server has one ``Readiness``, driven the same way by every service (see
``tandem.serving.app``):

- ``hold()`` when the server starts listening: NOT_SERVING (weights loading, warming up);
- ``open()`` once the weights are loaded and warmed up: SERVING;
- ``close()`` on SIGTERM/SIGINT, before the drain: NOT_SERVING for good. A closed gate does not
  open again, so a warm-up that ends during a drain cannot report a stopping server as ready.

Between ``open`` and ``close`` a dependency the server needs may go away and come back: the
gateway's dependency monitor calls ``degrade(name)`` (NOT_SERVING while any dependency is
down) and ``restore(name)`` (SERVING again once none is). Neither reopens a closed gate, and a
gate degraded before ``open`` opens NOT_SERVING until its dependencies are back.

The status is set for the overall server (``""``) and for each named service. ``LIVENESS``
is SERVING from ``hold`` to ``close`` whatever the dependencies do: a liveness probe that
checks it restarts a hung process, never one whose Redis is down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

State = Literal["holding", "serving", "closed"]
LIVENESS = "tandem.liveness"  # health service name: SERVING while the process is up, not draining


class Readiness:
    """NOT_SERVING -> SERVING (``open``) -> NOT_SERVING for good (``close``); NOT_SERVING in
    between while a dependency is down (``degrade``/``restore``)."""

    def __init__(self, service_names: Sequence[str]):
        self.service_names = list(service_names)
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs lacks .aio
        self.state: State = "holding"
        self.down: set[str] = set()  # dependencies reported down

    @property
    def serving(self) -> bool:
        """True while health reports SERVING."""
        return self.state == "serving" and not self.down

    async def hold(self) -> None:
        """NOT_SERVING until ``open`` (the servicer answers SERVING for ``""`` until told)."""
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)

    async def open(self) -> None:
        """SERVING, unless the gate was closed (or a dependency is down: then once it is back)."""
        if self.state == "closed":
            log.info("not reporting SERVING: the server is draining")
            return
        self.state = "serving"
        if self.down:
            log.warning("ready, but NOT_SERVING until %s is back", ", ".join(sorted(self.down)))
            return
        await self._set(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s", ", ".join(self.service_names))

    async def degrade(self, dependency: str) -> None:
        """NOT_SERVING while ``dependency`` is down (no effect on a closed gate)."""
        if dependency in self.down:
            return
        self.down.add(dependency)
        if self.state == "serving":
            log.warning("NOT_SERVING: %s is down", dependency)
            await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def restore(self, dependency: str) -> None:
        """``dependency`` is back: SERVING again once no dependency is down and the gate is open."""
        if dependency not in self.down:
            return
        self.down.discard(dependency)
        if self.state == "serving" and not self.down:
            log.info("%s is back: serving again", dependency)
            await self._set(health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        """NOT_SERVING for good; health watchers are told at once."""
        self.state = "closed"
        await self.servicer.enter_graceful_shutdown()

    async def _set(self, status: int) -> None:
        for name in ["", *self.service_names]:
            await self.servicer.set(name, status)
