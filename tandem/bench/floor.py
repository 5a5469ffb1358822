"""The floor of ``tandem bench overhead``: two bare gRPC hops around the same compute.

B10 asks what a request gains by going through the system (client -> gateway -> language worker)
instead of calling the engine in process. Part of that is no code of Tandem's: two ``grpc.aio``
hops in Python, each a socket write and the wake-ups of the receiving process's gRPC poller and
event loop. How much that costs depends on the machine (a VM whose idle vCPUs halt pays for every
wake-up) and grows when the far side computes between messages, as a model does. The ``floor``
arm measures it in the same run, so the figure Tandem owns is the difference:

- ``backend``: a ``grpc.aio`` server with one unary-stream method whose handler spins in a worker
  thread (``asyncio.to_thread``, as the engine thread runs the model) for the seconds the request
  names, then yields one response;
- ``relay``: a ``grpc.aio`` server that forwards each call to the backend and streams back what it
  answers, as the gateway does;
- the arm (``FloorArm``) starts both as child processes (``python -m tandem.bench.floor``), and
  each sample asks for as long a compute as the in-process arm took in the same round.

No interceptors, no protobuf (raw bytes), no logging: what is left is gRPC's own per-call cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

if TYPE_CHECKING:
    from tandem.bench.overhead_arms import ArmName, Sample

METHOD = "/tandem.bench.Floor/Call"
PORT_LINE = "floor listening on port "


def _spin(seconds: float) -> None:
    """Busy for ``seconds`` (the model's compute stands in as CPU work, not as a sleep)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _backend(request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
    await asyncio.to_thread(_spin, float(request.decode() or 0))
    yield b"done"


def _relay(target: str) -> Callable[[bytes, aio.ServicerContext], AsyncIterator[bytes]]:
    call = aio.insecure_channel(target).unary_stream(METHOD, None, None)  # inside the running loop

    async def relay(request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
        async for response in call(request):
            yield response

    return relay


async def serve(role: str, target: str | None = None) -> None:
    """Serve ``role`` on a free loopback port, announced on stdout, until killed."""
    handler = _relay(target) if role == "relay" and target else _backend
    server = aio.server()
    methods = {"Call": grpc.unary_stream_rpc_method_handler(handler)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tandem.bench.Floor", methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"{PORT_LINE}{port}", flush=True)
    await server.wait_for_termination()


class FloorArm:
    """Arm ``floor``: client -> relay -> backend, the backend computing as long as the latest
    in-process sample (``compute_s``) took."""

    name: ArmName = "floor"

    def __init__(self, compute_s: Callable[[], float], timeout_s: float = 300.0):
        self.compute_s = compute_s
        self.timeout_s = timeout_s
        self._children: list[subprocess.Popen[str]] = []
        self._channel: aio.Channel | None = None
        self._call: Callable[..., Any] | None = None

    async def open(self) -> None:
        # started from this (the main) thread: their parent-death signal follows it
        backend = self._start("backend")
        relay = self._start("relay", f"127.0.0.1:{backend}")
        self._channel = aio.insecure_channel(f"127.0.0.1:{relay}")
        self._call = self._channel.unary_stream(METHOD, None, None)
        await asyncio.wait_for(self._channel.channel_ready(), self.timeout_s)

    def _start(self, *args: str) -> int:
        """One child, armed to get SIGTERM should this process die first; its port, read from
        the line it prints once serving."""
        from tandem.serving.parent import PARENT_PID_ENV

        command = [sys.executable, "-m", "tandem.serving.parent", sys.executable, "-m", "tandem.bench.floor"]
        env = {**os.environ, PARENT_PID_ENV: str(os.getpid())}
        child = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, text=True, env=env)
        self._children.append(child)
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line.startswith(PORT_LINE):
            raise RuntimeError(f"the floor's {args[0]} did not start (exit code {child.poll()})")
        return int(line.removeprefix(PORT_LINE))

    async def sample(self, prompt: str, round_: int) -> Sample:
        from tandem.bench.overhead_arms import Sample

        assert self._call is not None, "open() first"
        request = f"{self.compute_s():.6f}".encode()
        sample, started = Sample("floor", round_), time.perf_counter()
        async for _ in self._call(request, timeout=self.timeout_s):
            sample.ttft = sample.ttft or time.perf_counter() - started
            sample.output_tokens += 1
        sample.latency = time.perf_counter() - started
        return sample

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
        for child in self._children:
            child.terminate()
        for child in self._children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=10)
            if child.poll() is None:
                child.kill()
                child.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tandem.bench.floor", description=__doc__.split("\n")[0])
    parser.add_argument("role", choices=("backend", "relay"))
    parser.add_argument("target", nargs="?", help="the backend's host:port (relay only)")
    args = parser.parse_args(argv)
    if args.role == "relay" and not args.target:
        parser.error("relay needs the backend's host:port")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.role, args.target))


if __name__ == "__main__":
    main()
