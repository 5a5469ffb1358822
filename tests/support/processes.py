"""Real service processes for system tests: a launcher that always stops its children, a
language worker as a child process, and an in-process gateway over given workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from grpc import aio
from vlm.v1 import gateway_pb2_grpc

from gateway.app import GatewayApp
from gateway.config import GatewayConfig
from tandem.launcher import Child, Launcher, ServiceSpec
from tandem.serving.bootstrap import channel_options
from tests.support import ROOT


@contextlib.contextmanager
def launcher(log_dir: Path) -> Iterator[Launcher]:
    """A launcher whose children are all killed (SIGTERM, then SIGKILL) on exit."""
    out = open(os.devnull, "w")  # noqa: SIM115 - closed below
    spawned = Launcher(log_dir, out=out)
    try:
        yield spawned
    finally:
        spawned.shutdown([], 10.0)
        out.close()


def spawn_llm(spawned: Launcher, name: str, model: Path, *extra: str) -> Child:
    """``python -m llm_service`` as a child of ``spawned`` (so its shutdown stops it).

    Started here rather than with ``Launcher.spawn``: that one forks with a ``preexec_fn``, and
    such a fork of this process (gRPC threads running) once died of SIGABRT before its exec
    ("epoll_wait error: Bad file descriptor"); a plain Popen does not run Python in the fork.
    """
    port_file = spawned.log_dir / f"{name}.port"
    command = (
        sys.executable, "-m", "llm_service", "--model", str(model), "--device", "cpu",
        "--redis-url", "", "--port", "0", "--port-file", str(port_file), *extra,
    )  # fmt: skip
    path = os.pathsep.join([str(ROOT), str(ROOT / "protos")])
    env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
    log_path = spawned.log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    child = Child(ServiceSpec(name, command, port_file=port_file), process, log_path, time.monotonic())
    spawned.children.append(child)
    return child


async def serving_llms(spawned: Launcher, model: Path, names: tuple[str, ...], timeout: float) -> list[Child]:
    """``spawn_llm`` for each of ``names``, returned once all of them serve (within ``timeout``)."""
    children = [spawn_llm(spawned, name, model) for name in names]
    await asyncio.to_thread(spawned.wait_serving, children, timeout)
    return children


@contextlib.asynccontextmanager
async def gateway_over(llm_addresses: tuple[str, ...], redis_url: str) -> AsyncIterator[Any]:
    """An in-process gateway on port 0 and a stub to it; stopped on exit."""
    config = GatewayConfig(
        llm_addresses=llm_addresses, redis_url=redis_url, port=0, grace_seconds=1, cache_prefix="faults"
    )
    app = GatewayApp(config)
    port = await app.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}", options=channel_options(64 << 20)) as channel:
            yield gateway_pb2_grpc.GatewayServiceStub(channel)
    finally:
        await app.stop()
