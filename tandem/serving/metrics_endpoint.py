"""``GET /metrics`` on its own port, for a worker's Prometheus scrape (``--metrics-port``).

Served by aiohttp on the service's event loop, next to the gRPC server (the gateway also
serves the same registry on its HTTP port). Started and stopped by ``GrpcServer``.
"""

from __future__ import annotations

import logging

from aiohttp import web

from tandem.metrics import Metrics

log = logging.getLogger(__name__)


async def render(metrics: Metrics, request: web.Request) -> web.Response:
    """A scrape of ``metrics``, in the format the scraper's Accept header prefers."""
    body, content_type = metrics.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


class MetricsEndpoint:
    """An HTTP listener with one route, ``/metrics``; ``start()`` binds, ``stop()`` closes."""

    def __init__(self, metrics: Metrics, host: str, port: int):
        self.metrics = metrics
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        """Listen; returns the bound port."""
        app = web.Application()
        app.add_routes([web.get("/metrics", self._scrape)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)
        return self.port

    async def _scrape(self, request: web.Request) -> web.Response:
        return await render(self.metrics, request)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
