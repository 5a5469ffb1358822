"""``ServiceApp``: one Tandem service process, run the same way by all three services.

A service's app builds its parts from its config, owns a ``GrpcServer`` and says how to get
ready (``warmup``) and how to let go (``shutdown``). The lifecycle is the same everywhere:

1. ``server.start()``: listening, health NOT_SERVING (the readiness gate is held); the
   servicer answers UNAVAILABLE until its domain object is ready;
2. ``warmup()``: load the weights (or find the downstream services) and run a warm-up request;
3. ``server.set_serving()``: the gate opens, health SERVING;
4. on SIGTERM/SIGINT (``serve``) or ``stop()``: the gate closes (NOT_SERVING for good), running
   calls finish within the grace period, then ``shutdown()`` releases what ``warmup`` took.

``run_service`` is what ``python -m <service>`` runs; ``start()``/``stop()`` run the same steps
inside a caller's event loop (tests, benchmarks, in-process servers).
"""

from __future__ import annotations

import asyncio
import gc
import os
from abc import ABC, abstractmethod
from collections.abc import Callable

from tandem.serving.bootstrap import GrpcServer, run_until_signal
from tandem.serving.tracing import Tracing


class ServiceApp(ABC):
    """A service's parts around its ``server``; see the module docstring for the lifecycle."""

    server: GrpcServer

    @abstractmethod
    async def warmup(self) -> None:
        """Get ready to serve: load, connect, warm up. Health reports SERVING after it returns."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Release what ``warmup`` and the constructor acquired; runs after the drain."""

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, then drain and shut down; drained whatever happens."""
        try:
            await run_until_signal(self.server, self.warmup, self.shutdown)
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

    async def main() -> None:
        await build(tracing).serve()

    try:
        asyncio.run(main())
    finally:
        tracing.shutdown()
        gc.freeze()  # stopped: exit without the interpreter's last sweep of torch's objects (~2 s)
