"""ServiceApp's lifecycle on the shared server bootstrap: SERVING only after the warm-up, a
failed warm-up or a reported failure drains, SIGTERM drains and shuts down, run_service's exit
code."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2

from tandem.serving.app import ServiceApp, run_service
from tandem.serving.bootstrap import GrpcServer
from tandem.serving.config import ServerConfig
from tandem.serving.tracing import Tracing
from tests.support.bootstrap_servicer import SERVICE, health_status, register


class FakeApp(ServiceApp):
    """A service whose warm-up records what health said while it ran."""

    def __init__(self, fail_warmup: bool = False):
        self.server = GrpcServer(ServerConfig(grace_seconds=0.5), [register], [SERVICE])
        self.fail_warmup = fail_warmup
        self.seen_while_warming: list[str] = []
        self.shut_down = False

    async def warmup(self) -> None:
        self.seen_while_warming.append(self.server.readiness.state)
        if self.fail_warmup:
            raise RuntimeError("weights are missing")

    async def shutdown(self) -> None:
        self.shut_down = True


async def test_service_app_serves_only_after_warmup_and_stops_for_good() -> None:
    app = FakeApp()
    port = await app.start()
    try:
        assert app.seen_while_warming == ["holding"]
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.stop()
    assert app.server.readiness.state == "closed" and app.shut_down


async def _until_serving(app: FakeApp) -> None:
    """Wait up to 2 s for ``app.serve()`` to report SERVING (the caller asserts it did)."""
    for _ in range(100):
        if app.server.readiness.state == "serving":
            return
        await asyncio.sleep(0.02)


async def test_service_app_serve_drains_when_warmup_fails() -> None:
    app = FakeApp(fail_warmup=True)
    with pytest.raises(RuntimeError, match="weights are missing"):
        await asyncio.wait_for(app.serve(), timeout=5)
    assert app.seen_while_warming == ["holding"]
    assert app.server.readiness.state == "closed"  # drained, never reported SERVING
    assert not app.shut_down


async def test_a_service_that_fails_reports_not_serving_drains_and_ends_serve() -> None:
    app = FakeApp()
    task = asyncio.ensure_future(app.serve())
    try:
        await _until_serving(app)
        assert app.server.readiness.state == "serving" and app.failure is None
        await app.fail("the engine died")
        assert app.server.readiness.state == "closed"  # at once, before the drain ends
        await asyncio.wait_for(task, timeout=5)
        assert app.failure == "the engine died" and app.shut_down
        await app.fail("again")  # a second failure changes nothing
        assert app.failure == "the engine died"
    finally:
        if not task.done():
            task.cancel()
        await app.server.drain()


def test_run_service_exits_with_code_1_after_a_failure() -> None:
    class Failing(FakeApp):
        async def warmup(self) -> None:
            asyncio.get_running_loop().call_later(
                0.1, lambda: asyncio.ensure_future(self.fail("engine died"))
            )

    apps: list[Failing] = []

    def build(tracing: Tracing) -> Failing:
        apps.append(Failing())
        return apps[-1]

    with pytest.raises(SystemExit) as exit_info:
        run_service(build, "fake")
    assert exit_info.value.code == 1 and apps[0].shut_down


async def test_service_app_serve_drains_and_shuts_down_on_sigterm() -> None:
    app = FakeApp()
    task = asyncio.ensure_future(app.serve())
    try:
        await _until_serving(app)
        assert app.server.readiness.state == "serving"
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, timeout=5)
        assert app.server.readiness.state == "closed" and app.shut_down
    finally:
        if not task.done():
            task.cancel()
        await app.server.drain()
