"""``tandem up``: the whole system on one machine, as real processes with a real Redis.

Order: Redis, then the vision service (only for a VLM) and the language service side by side
on free loopback ports, then the gateway on ``--host:--grpc-port`` pointed at them. Each is a
separate ``python -m <service>`` process whose flags are built from that service's own config
dataclass; ``--llm-*`` and ``--vision-*`` pass the workers' own options through
(``tandem.cli.services``). While they load, each prints a ``loading... N s`` line every few
seconds. The model and every option are checked before
anything starts: a problem is one line on stderr and exit status 2.

Redis has two roles (``tandem.cli.embedded_redis``): the state (sessions, never evicted, an
append-only file under ``--data-dir``, printed at start) and the cache (embeddings and images,
``--redis-maxmemory``, LRU). Both are embedded ``redis-server`` processes unless ``--redis-url``
(both roles) or ``--state-redis-url`` (the state) point elsewhere.

Supervision: once everything is up, a process that dies (an embedded Redis, a worker, the
gateway) is restarted on the same port with backoff (1 s, 2 s, 4 s ... 30 s), and the output
says so (``llm exited (code -9); restarting in 1 s``); the others keep running. Committed
session turns survive: they are in the state Redis's append-only file, which a restarted Redis
replays. A process that fails 5 times in a row, each within a minute of starting, is given up
on: ``tandem up`` says why, stops everything and exits 1 (``tandem.supervisor``).

Stopping (Ctrl-C, SIGTERM, SIGHUP) goes the other way: the gateway first (running requests get
``--grace-seconds``), then the workers together, Redis last; whatever has not exited after
``--stop-timeout`` is killed. Every child also stops if ``tandem up`` itself dies (``kill -9``
included), and stopping never depends on stdout: ``tandem up | tee log`` stops cleanly too.

Each worker serves Prometheus metrics on a free port (the gateway on its HTTP port); the ready
message has one ``metrics <service> <url>`` line per service.

Credentials: ``--api-key NAME=TOKEN`` (repeatable) are the gateway's public keys, one tenant
each (also read there: ``TANDEM_API_KEYS``, ``TANDEM_API_KEYS_FILE``, ``TANDEM_AUTH_TOKEN``).
The workers never take a public key: every run makes a random internal token, which the workers
require and the gateway sends. Both reach the children through their environment, never their
command line, so ``ps`` shows neither.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import secrets
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from tandem.cli import embedded_redis
from tandem.cli.embedded_redis import RedisRoles
from tandem.cli.model_family import detect_family
from tandem.cli.services import (
    CONFIGS,
    ConfigError,
    add_worker_options,
    check_argv,
    config_argv,
    config_class,
    given_worker_options,
    worker_argv,
)
from tandem.launcher import (
    Child,
    ChildFailed,
    Launcher,
    ServiceProcess,
    ServiceSpec,
    print_line,
)
from tandem.ports import free_port
from tandem.supervisor import GaveUp, Supervised, Supervisor

__all__ = ["CONFIGS", "STOP_ORDER", "config_argv", "config_class", "run"]

STOP_ORDER = (("gateway",), ("vision", "llm"))
METRICS_PORT_ENV = "TANDEM_METRICS_PORT"


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
    embedded_redis.add_options(parser)
    _add_network_options(parser)
    _add_log_options(parser)
    _add_lifecycle_options(parser)
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="NAME=TOKEN",
        help="a public API key of the gateway: calls with `Bearer TOKEN` belong to tenant NAME "
        "(repeatable; none: no auth, unless TANDEM_API_KEYS, TANDEM_API_KEYS_FILE or "
        "TANDEM_AUTH_TOKEN are set)",
    )
    add_worker_options(parser)
    parser.set_defaults(run=run)


def _add_network_options(parser: argparse.ArgumentParser) -> None:
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


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-dir", type=Path, help="folder for the services' logs (default: a new temporary folder)"
    )
    parser.add_argument(
        "--log-level", default="INFO", help="log level of the services (default: %(default)s)"
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines of the services: text, or one JSON object each (default: %(default)s)",
    )


def _add_lifecycle_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds each service may take to report SERVING"
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=2.0,
        help="how long running requests may finish after Ctrl-C or SIGTERM (default: %(default)s)",
    )
    parser.add_argument(
        "--gateway-nice",
        type=int,
        default=0,
        choices=range(20),
        metavar="0-19",
        help="CPU niceness of the gateway (e.g. 10: it yields the cores to the model's threads; one "
        "stream decodes a few %% faster, under load new requests wait longer; default: %(default)s)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        help="seconds each service may take to exit after SIGTERM before it is killed "
        "(default: --grace-seconds + 3)",
    )


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


def check_model(model: str) -> bool:
    """``is_vlm``, with a missing, unknown or unreadable model as a one-line ``ConfigError``."""
    try:
        return is_vlm(model)
    except (OSError, ValueError) as exc:  # not found, not on the hub, hub unreachable, bad JSON
        raise ConfigError(str(exc)) from exc


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
        "redis_url": "" if getattr(args, "no_embedding_cache", False) else redis_url,
        "cache_prefix": cache_prefix(),
        "host": "127.0.0.1",
        "port": 0,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "grace_seconds": args.grace_seconds,
    }
    workers = {"llm": {**common, "device": args.device}}
    if vlm:
        workers["vision"] = {**common, "device": vision_device(args.device)}
    elif ignored := given_worker_options(args, "vision"):
        say(f"note: {' '.join(ignored)} ignored: the model is text-only (no vision worker)", err=True)
    specs = {}
    for name, values in workers.items():
        port_file = log_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        argv = config_argv(
            config_class(name), {**values, "port_file": port_file}, ("model", "port", "port_file")
        )
        argv += worker_argv(args, name)
        check_argv(name, argv)
        command = (sys.executable, "-m", CONFIGS[name][0], *argv)
        env = {METRICS_PORT_ENV: str(free_port()), **internal_env(args)}
        specs[name] = ServiceSpec(name, command, port_file=port_file, env=env)
    return specs


def internal_env(args: argparse.Namespace) -> dict[str, str]:
    """The run's internal token (``run`` makes it) as the children's environment."""
    token = getattr(args, "internal_token", None)
    return {"TANDEM_INTERNAL_TOKEN": token} if token else {}


def check_api_keys(args: argparse.Namespace) -> None:
    """A malformed ``--api-key`` is a ``ConfigError`` before anything starts."""
    from tandem.serving.api_keys import ApiKeys

    try:
        ApiKeys.parse(args.api_key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def gateway_spec(
    args: argparse.Namespace,
    model: str,
    redis_url: str,
    ports: Mapping[str, int],
    log_dir: Path,
    state_url: str | None = None,
) -> ServiceSpec:
    """The gateway's command: ``redis_url`` is the cache, ``state_url`` the state Redis."""
    config = config_class("gateway")
    port_file = log_dir / "gateway.port"
    for stale in (port_file, log_dir / "gateway.http-port"):
        stale.unlink(missing_ok=True)
    values = {
        "model": model,
        "redis_url": redis_url,
        "state_redis_url": state_url,
        "cache_prefix": cache_prefix(),
        "host": args.host,
        "port": args.grpc_port,
        "port_file": port_file,
        "http_port": args.http_port,
        "http_port_file": log_dir / "gateway.http-port",
        "log_level": args.log_level,
        "log_format": args.log_format,
        "grace_seconds": args.grace_seconds,
        "nice": args.gateway_nice,
        "llm_addresses": [f"127.0.0.1:{ports['llm']}"],
        "vision_addresses": [f"127.0.0.1:{ports['vision']}"] if "vision" in ports else None,
    }
    argv = config_argv(config, values, ("port", "port_file", "llm_addresses", "vision_addresses"))
    env = internal_env(args)
    if args.api_key:  # the keys go by environment: argv is visible to every user (ps)
        env["TANDEM_API_KEYS"] = ",".join(args.api_key)
    if args.http_port < 0:  # no HTTP port to serve /metrics on: a port of its own
        env[METRICS_PORT_ENV] = str(free_port())
    command = (sys.executable, "-m", "gateway", *argv)
    pins = {"--http-port": log_dir / "gateway.http-port"} if args.http_port >= 0 else {}
    return ServiceSpec("gateway", command, port_file=port_file, env=env, restart_pins=pins)


def metrics_lines(args: argparse.Namespace, specs: Sequence[ServiceSpec], log_dir: Path) -> str:
    """``metrics <service> <url>`` for each service: its metrics port, else the gateway's HTTP."""
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    lines = []
    for spec in specs:
        if METRICS_PORT_ENV in spec.env:
            address = host if spec.name == "gateway" else "127.0.0.1"  # workers listen on loopback
            lines.append(f"metrics {spec.name} http://{address}:{spec.env[METRICS_PORT_ENV]}/metrics")
        elif base_url := http_base_url(args, host, log_dir):
            lines.append(f"metrics {spec.name} {base_url.removesuffix('/v1')}/metrics")
    return "\n".join(lines)


def serves_http(config: type[Any]) -> bool:
    return any(f.name == "http_port" for f in dataclasses.fields(config))


def say(message: str, err: bool = False) -> None:
    """Print a line of ``tandem up``; never raises (see ``print_line``)."""
    print_line(message, sys.stderr if err else sys.stdout)


def run(args: argparse.Namespace) -> int:
    """``tandem up``: 0 after a clean stop, 1 when a service failed, 2 when it cannot start."""
    try:
        check_api_keys(args)
        args.internal_token = secrets.token_urlsafe(32)  # this run's, for workers and gateway
        model = args.model or default_model()
        vlm = check_model(model)
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="tandem-up-"))
        redis = embedded_redis.plan(args)
        workers = service_specs(args, model, vlm, redis.cache_url, log_dir)
        family = detect_family(model)
    except ConfigError as exc:
        say(f"tandem up: {exc}", err=True)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    launcher = Launcher(log_dir, stop)
    try:
        say(f"starting Tandem ({'VLM' if vlm else 'text-only'} model {model}); logs in {log_dir}")
        if family is not None:
            say(f"model family: {family}")
        if redis.data_dir is not None:
            say(f"data: {redis.data_dir} (sessions persist here; --data-dir)")
        redis.start(say)
        return _run_services(args, launcher, workers, model, redis, log_dir)
    except (ChildFailed, GaveUp) as exc:
        say(f"tandem up: {exc}", err=True)
        return 1
    except (RuntimeError, TimeoutError) as exc:  # an embedded Redis that cannot start
        say(f"tandem up: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        say("interrupted during start-up")
        return 0
    finally:
        _stop(launcher, redis, args)


def _stop(launcher: Launcher, redis: RedisRoles, args: argparse.Namespace) -> None:
    """Gateway, then workers, then Redis, each bounded; Redis is stopped whatever happened."""
    timeout = args.stop_timeout if args.stop_timeout is not None else args.grace_seconds + 3.0
    try:
        launcher.shutdown(STOP_ORDER, timeout)
    finally:
        redis.close(say)
        say("Tandem stopped.")
        gc.freeze()  # everything has stopped: skip the interpreter's last sweep of torch's objects


def _run_services(
    args: argparse.Namespace,
    launcher: Launcher,
    workers: Mapping[str, ServiceSpec],
    model: str,
    redis: RedisRoles,
    log_dir: Path,
) -> int:
    started = [launcher.spawn(spec) for spec in workers.values()]
    ports = {child.name: launcher.wait_for_port(child, args.startup_timeout) for child in started}
    spec = gateway_spec(args, model, redis.cache_url, ports, log_dir, redis.state_url)
    gateway = launcher.spawn(spec)
    launcher.wait_serving([*started, gateway], args.startup_timeout)
    say(metrics_lines(args, [gateway.spec, *workers.values()], log_dir))
    _print_ready(args, gateway.port or 0, redis.describe(), log_dir, "vision" in workers)
    _supervise(launcher, [*started, gateway], redis)
    say("signal received: stopping")
    return 0


def _supervise(launcher: Launcher, children: Sequence[Child], redis: RedisRoles) -> None:
    """Restart what dies until a signal (``tandem.supervisor``); ``GaveUp`` ends it."""
    processes: list[Supervised] = [*redis.embedded, *(ServiceProcess(launcher, c) for c in children)]
    Supervisor(processes, launcher.stop_event, say).run()


def http_endpoint(args: argparse.Namespace, host: str, log_dir: Path) -> str:
    """What the ready message says about the OpenAI-compatible HTTP endpoint."""
    if not serves_http(config_class("gateway")):
        return f"not served yet (--http-port {args.http_port} accepted; the gateway has no HTTP endpoint)"
    if args.http_port < 0:
        return "off (--http-port -1)"
    return f"{http_base_url(args, host, log_dir)} (OpenAI-compatible)"


def http_base_url(args: argparse.Namespace, host: str, log_dir: Path) -> str | None:
    """The OpenAI-compatible base URL (``.../v1``), None when the gateway serves no HTTP."""
    if args.http_port < 0 or not serves_http(config_class("gateway")):
        return None
    port_file = log_dir / "gateway.http-port"
    port = port_file.read_text().strip() if port_file.exists() else str(args.http_port)
    return f"http://{host}:{port}/v1"


def _print_ready(args: argparse.Namespace, port: int, redis: str, log_dir: Path, vlm: bool) -> None:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    image = ' --image examples/shapes.png "What is in this image?"' if vlm else ' "Hello!"'
    clients = f"export TANDEM_ADDRESS={host}:{port}"
    if base_url := http_base_url(args, host, log_dir):
        clients += f" TANDEM_BASE_URL={base_url}"
    lines = [
        f"Tandem is ready: gRPC gateway at {host}:{port}",
        f"  gRPC     {host}:{port}  (vlm.v1.GatewayService, grpc.health.v1.Health)",
        f"  HTTP     {http_endpoint(args, host, log_dir)}",
        f"  Redis    {redis}",
        f"  logs     {log_dir}",
        f"  clients  {clients}",
        f"try: tandem generate --address {host}:{port}{image}",
        "Press Ctrl-C to stop.",
    ]
    say("\n".join(lines))
