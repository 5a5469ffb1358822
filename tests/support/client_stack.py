"""A live Tandem for the client and OpenAI tests: real processes, real Redis, tiny LLaVA.

``start_stack`` runs the vision and language services and two gateways over them as
``python -m ...`` children (``tandem.launcher``), all on port 0:

* ``open``: defaults (SSRF guard on, no auth), gRPC + OpenAI HTTP;
* ``guarded``: ``--allow-private-urls`` (so a local http server can serve image URLs),
  ``--auth-token``, and small limits (1 MiB per image, 4 MiB messages/bodies).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tandem.launcher import Child, Launcher, ServiceSpec
from tests.support import ROOT

TOKEN = "client-test-token"
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Gateway:
    grpc: str
    http: str

    @property
    def openai_base(self) -> str:
        return f"{self.http}/v1"


@dataclass(frozen=True)
class Stack:
    open: Gateway
    guarded: Gateway
    model: str
    log_dir: Path


def _spec(name: str, module: str, args: list[str], log_dir: Path) -> ServiceSpec:
    port_file = log_dir / f"{name}.port"
    command = (sys.executable, "-m", module, *args, "--port", "0", "--port-file", str(port_file))
    env = {
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")]),
        "TOKENIZERS_PARALLELISM": "false",
    }
    return ServiceSpec(name, command, port_file=port_file, env=env)


def _gateway(name: str, common: list[str], extra: list[str], log_dir: Path) -> ServiceSpec:
    http_file = log_dir / f"{name}.http"
    return _spec(
        name, "gateway", [*common, "--http-port", "0", "--http-port-file", str(http_file), *extra], log_dir
    )


def _addresses(launcher: Launcher, child: Child, log_dir: Path) -> Gateway:
    http_port = (log_dir / f"{child.name}.http").read_text().strip()
    return Gateway(f"127.0.0.1:{child.port}", f"http://127.0.0.1:{http_port}")


@contextlib.contextmanager
def start_stack(model: Path, redis_url: str, log_dir: Path, timeout: float = 180.0) -> Iterator[Stack]:
    """Start everything, wait for SERVING, yield the addresses; always stop every child."""
    launcher = Launcher(log_dir, out=open(os.devnull, "w"))  # noqa: SIM115 - closed with the launcher
    worker_args = [
        "--model",
        str(model),
        "--redis-url",
        redis_url,
        "--cache-prefix",
        "clienttest",
        "--device",
        "cpu",
    ]
    try:
        vision = launcher.spawn(_spec("vision", "vision_service", worker_args, log_dir))
        llm = launcher.spawn(_spec("llm", "llm_service", worker_args, log_dir))
        downstream = [
            "--redis-url", redis_url, "--cache-prefix", "clienttest",
            "--llm-addresses", f"127.0.0.1:{launcher.wait_for_port(llm, timeout)}",
            "--vision-addresses", f"127.0.0.1:{launcher.wait_for_port(vision, timeout)}",
        ]  # fmt: skip
        guarded_args = [
            "--allow-private-urls", "--auth-token", TOKEN, "--max-image-bytes", str(_MIB),
            "--max-request-bytes", str(2 * _MIB), "--max-message-bytes", str(4 * _MIB),
        ]  # fmt: skip
        open_gw = launcher.spawn(_gateway("open", downstream, [], log_dir))
        guarded_gw = launcher.spawn(_gateway("guarded", downstream, guarded_args, log_dir))
        launcher.wait_serving([vision, llm, open_gw, guarded_gw], timeout)
        yield Stack(
            _addresses(launcher, open_gw, log_dir),
            _addresses(launcher, guarded_gw, log_dir),
            model.name,  # the public model id: the checkpoint folder's name, never its path
            log_dir,
        )
    finally:
        launcher.shutdown([["open", "guarded"], ["vision", "llm"]], 15.0)
        launcher.out.close()
