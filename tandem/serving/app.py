"""``ServiceApp``: one Tandem service process, run the same way by all three services.

A service's app builds its parts from its config, owns a ``GrpcServer`` and says how to get
ready (``warmup``) and how to let go (``shutdown``). The lifecycle is the same everywhere:

1. ``server.start()``: listening, health NOT_SERVING (the readiness gate is held); the
   servicer answers UNAVAILABLE until its domain object is ready;
2. ``warmup()``: load the weights (or find the downstream services) and run a warm-up request;
3. ``server.set_serving()``: the gate opens, health SERVING;
4. on SIGTERM/SIGINT (``serve``) or ``stop()``: the gate closes (NOT_SERVING for good), running
   calls finish within the grace period, then ``shutdown()`` releases what ``warmup`` took;
5. ``fail(reason)``, when the service finds it cannot go on (its engine died): NOT_SERVING at
   once, then step 4, and ``run_service`` exits with code 1 so the replica is restarted.

``run_service`` is what ``python -m <service>`` runs; ``start()``/``stop()`` run the same steps
inside a caller's event loop (tests, benchmarks, in-process servers).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable

from tandem.serving.bootstrap import GrpcServer, run_until_signal
from tandem.serving.tracing import Tracing

log = logging.getLogger(__name__)


class ServiceApp(ABC):
    """A service's parts around its ``server``; see the module docstring for the lifecycle."""

    server: GrpcServer
    failure: str | None = None  # why the service stopped itself (``fail``); its exit code is 1
    _stop_event: asyncio.Event | None = None

    def _stop(self) -> asyncio.Event:
        """Set to end ``serve`` as a signal does (made on first use, in the serving loop)."""
        if self._stop_event is None:
            self._stop_event = asyncio.Event()
        return self._stop_event

    async def fail(self, reason: str) -> None:
        """The service cannot serve any more (e.g. its engine died): health NOT_SERVING at once,
        then drain and shut down as on SIGTERM; the process exits with code 1, so that an
        orchestrator restarts it (``tandem up`` stops, Kubernetes restarts the container)."""
        if self.failure is not None:
            return
        self.failure = reason
        log.error("%s: NOT_SERVING; stopping so that this replica is restarted", reason)
        await self.server.readiness.close()
        self._stop().set()

    @abstractmethod
    async def warmup(self) -> None:
        """Get ready to serve: load, connect, warm up. Health reports SERVING after it returns."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Release what ``warmup`` and the constructor acquired; runs after the drain."""

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, then drain and shut down; drained whatever happens."""
        try:
            await run_until_signal(self.server, self.warmup, self.shutdown, self._stop())
        finally:
            await self.server.drain()

    async def start(self) -> int:
        """Listen, warm up and report SERVING in the running loop; returns the bound port."""
        port = await self.server.start()
        await self.warmup()
        await self.server.set_serving()
        return port

    async def stop(self) -> None:
        """Drain the server, then shut down (the counterpart of ``start``)."""
        await self.server.drain()
        await self.shutdown()


def run_service(build: Callable[[Tracing], ServiceApp], name: str) -> None:
    """Build an app inside a new event loop (its channels belong to that loop) and ``serve`` it.

    ``build`` gets the tracing the standard ``OTEL_*`` environment asks for (``name`` is the
    service's name in traces), which is flushed when the app has stopped.
    """
    tracing = Tracing.from_env(name, os.environ)

    failure: str | None = None

    async def main() -> None:
        nonlocal failure
        app = build(tracing)
        await app.serve()
        failure = app.failure

    try:
        asyncio.run(main())
        if failure is not None:
            raise SystemExit(1)
    finally:
        tracing.shutdown()
        gc.freeze()  # stopped: exit without the interpreter's last sweep of torch's objects (~2 s)
