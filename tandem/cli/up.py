"""``tandem up``: the whole system on one machine, as real processes with a real Redis.

Order: Redis (embedded ``redis-server`` unless ``--redis-url``), then the vision service (only
for a VLM) and the language service side by side on free loopback ports, then the gateway on
``--host:--grpc-port`` pointed at them. Each is a separate ``python -m <service>`` process whose
flags are built from that service's own config dataclass. Stopping goes the other way: gateway
first (it drains its streams), then the workers, Redis last.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from tandem.launcher import ChildFailed, Launcher, ServiceSpec

CONFIGS = {
    "vision": ("vision_service", "vision_service.config", "VisionConfig"),
    "llm": ("llm_service", "llm_service.config", "LlmConfig"),
    "gateway": ("gateway", "gateway.config", "GatewayConfig"),
}
STOP_ORDER = (("gateway",), ("vision", "llm"))


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "up",
        help="start Redis, the vision, language and gateway services; stop them on Ctrl-C",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("TANDEM_MODEL"),
        help="checkpoint folder or Hugging Face hub id (default: $TANDEM_MODEL, else Tandem's default "
        "model, which ships in the package)",
    )
    parser.add_argument("--redis-url", help="use this Redis instead of starting an embedded redis-server")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the gateway listens on (default: %(default)s)"
    )
    parser.add_argument(
        "--grpc-port", type=int, default=50051, help="gateway gRPC port; 0 = any free (default: %(default)s)"
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=8000,
        help="OpenAI-compatible HTTP port of the gateway; 0 = any free, -1 = off (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the models run (default: %(default)s)",
    )
    parser.add_argument(
        "--log-dir", type=Path, help="folder for the services' logs (default: a new temporary folder)"
    )
    parser.add_argument(
        "--log-level", default="INFO", help="log level of the services (default: %(default)s)"
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds each service may take to report SERVING"
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=20.0,
        help="seconds a service may take to drain before it is killed",
    )
    parser.set_defaults(run=run)


def config_class(service: str) -> type[Any]:
    """The config dataclass of ``service``; a clear error when the package is missing."""
    _, module_name, class_name = CONFIGS[service]
    try:
        return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"tandem up: cannot load {module_name}.{class_name}: {exc}") from exc


def config_argv(config: type[Any], values: Mapping[str, Any], required: tuple[str, ...] = ()) -> list[str]:
    """Flags for the fields of ``config`` named in ``values`` (others are left out; None skipped)."""
    fields = {f.name for f in dataclasses.fields(config)}
    missing = [name for name in required if name not in fields]
    if missing:
        raise SystemExit(f"tandem up: {config.__name__} has no field {missing}; cannot configure it")
    argv: list[str] = []
    for name, value in values.items():
        if name not in fields or value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


def default_model(out: TextIO | None = None) -> str:
    """The checkpoint of Tandem's default model, shipped in the package."""
    from tandem.default_model import CHECKPOINT

    if not (CHECKPOINT / "config.json").is_file():
        raise SystemExit(
            f"tandem up: the default model is missing from this install ({CHECKPOINT}); pass --model"
        )
    print(f"model: Tandem's default model ({CHECKPOINT})", file=out or sys.stdout, flush=True)
    return str(CHECKPOINT)


def is_vlm(model: str) -> bool:
    """True when the checkpoint's config.json has a vision tower (``vision_config``)."""
    from tandem.models.checkpoint import read_config, resolve

    return "vision_config" in read_config(resolve(model))


def vision_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_prefix() -> str:
    """One key prefix for all three services (not every service reads $TANDEM_CACHE_PREFIX)."""
    return os.environ.get("TANDEM_CACHE_PREFIX") or "tandem"


def service_specs(
    args: argparse.Namespace, model: str, vlm: bool, redis_url: str, log_dir: Path
) -> dict[str, Any]:
    """What to run; the gateway's addresses are filled in once the workers have ports."""
    common = {
        "model": model,
        "redis_url": redis_url,
        "cache_prefix": cache_prefix(),
        "host": "127.0.0.1",
        "port": 0,
        "log_level": args.log_level,
    }
    workers = {"llm": {**common, "device": args.device}}
    if vlm:
        workers["vision"] = {**common, "device": vision_device(args.device)}
    specs = {}
    for name, values in workers.items():
        port_file = log_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        argv = config_argv(
            config_class(name), {**values, "port_file": port_file}, ("model", "port", "port_file")
        )
        specs[name] = ServiceSpec(name, (sys.executable, "-m", CONFIGS[name][0], *argv), port_file=port_file)
    return specs


def gateway_spec(
    args: argparse.Namespace, model: str, redis_url: str, ports: Mapping[str, int], log_dir: Path
) -> ServiceSpec:
    config = config_class("gateway")
    port_file = log_dir / "gateway.port"
    for stale in (port_file, log_dir / "gateway.http-port"):
        stale.unlink(missing_ok=True)
    values = {
        "model": model,
        "redis_url": redis_url,
        "cache_prefix": cache_prefix(),
        "host": args.host,
        "port": args.grpc_port,
        "port_file": port_file,
        "http_port": args.http_port,
        "http_port_file": log_dir / "gateway.http-port",
        "log_level": args.log_level,
        "llm_addresses": [f"127.0.0.1:{ports['llm']}"],
        "vision_addresses": [f"127.0.0.1:{ports['vision']}"] if "vision" in ports else None,
    }
    argv = config_argv(config, values, ("port", "port_file", "llm_addresses", "vision_addresses"))
    env = {}
    token = os.environ.get("TANDEM_AUTH_TOKEN")
    if token and "TANDEM_DOWNSTREAM_AUTH_TOKEN" not in os.environ:
        env["TANDEM_DOWNSTREAM_AUTH_TOKEN"] = token  # the workers require the same token
    return ServiceSpec("gateway", (sys.executable, "-m", "gateway", *argv), port_file=port_file, env=env)


def serves_http(config: type[Any]) -> bool:
    return any(f.name == "http_port" for f in dataclasses.fields(config))


def run(args: argparse.Namespace) -> int:
    """``tandem up``: returns 0 after a clean stop, 1 when a service failed."""
    model = args.model or default_model()
    vlm = is_vlm(model)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="tandem-up-"))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    launcher = Launcher(log_dir, stop)
    redis = None
    try:
        print(
            f"starting Tandem ({'VLM' if vlm else 'text-only'} model {model}); logs in {log_dir}", flush=True
        )
        redis_url = args.redis_url
        if not redis_url:
            from tandem.redis_local import LocalRedis

            redis = LocalRedis().start()
            redis_url = redis.url
            print(f"  redis    SERVING at {redis_url} (embedded redis-server)", flush=True)
        return _run_services(args, launcher, model, vlm, redis_url, log_dir)
    except ChildFailed as exc:
        print(f"tandem up: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted during start-up", flush=True)
        return 0
    finally:
        launcher.shutdown(STOP_ORDER, args.stop_timeout)
        if redis is not None:
            redis.close()
            print("  redis    stopped", flush=True)
        print("Tandem stopped.", flush=True)


def _run_services(
    args: argparse.Namespace, launcher: Launcher, model: str, vlm: bool, redis_url: str, log_dir: Path
) -> int:
    workers = [launcher.spawn(spec) for spec in service_specs(args, model, vlm, redis_url, log_dir).values()]
    ports = {child.name: launcher.wait_for_port(child, args.startup_timeout) for child in workers}
    gateway = launcher.spawn(gateway_spec(args, model, redis_url, ports, log_dir))
    launcher.wait_serving([*workers, gateway], args.startup_timeout)
    _print_ready(args, gateway.port or 0, redis_url, log_dir, vlm)
    died = launcher.watch()
    if died is not None:
        print(f"tandem up: {died.failure(f'exited with code {died.exited()}')}", file=sys.stderr, flush=True)
        return 1
    print("signal received: stopping", flush=True)
    return 0


def http_endpoint(args: argparse.Namespace, host: str, log_dir: Path) -> str:
    """What the ready message says about the OpenAI-compatible HTTP endpoint."""
    if not serves_http(config_class("gateway")):
        return f"not served yet (--http-port {args.http_port} accepted; the gateway has no HTTP endpoint)"
    if args.http_port < 0:
        return "off (--http-port -1)"
    port_file = log_dir / "gateway.http-port"
    port = port_file.read_text().strip() if port_file.exists() else str(args.http_port)
    return f"http://{host}:{port}/v1 (OpenAI-compatible)"


def _print_ready(args: argparse.Namespace, port: int, redis_url: str, log_dir: Path, vlm: bool) -> None:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    image = ' --image examples/shapes.png "What is in this image?"' if vlm else ' "Hello!"'
    lines = [
        f"Tandem is ready: gRPC gateway at {host}:{port}",
        f"  gRPC     {host}:{port}  (vlm.v1.GatewayService, grpc.health.v1.Health)",
        f"  HTTP     {http_endpoint(args, host, log_dir)}",
        f"  Redis    {redis_url}",
        f"  logs     {log_dir}",
        f"try: tandem generate --address {host}:{port}{image}",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)
