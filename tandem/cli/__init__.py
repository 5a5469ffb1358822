"""The ``tandem`` command: bring the system up on one machine, and talk to a running gateway.

- ``tandem up``: Redis, the vision service (for a VLM), the language service and the gateway as
  separate processes, health-checked, stopped cleanly on Ctrl-C or SIGTERM.
- ``tandem generate``: one request (prompt plus images) to a gateway; prints the answer.
- ``tandem chat``: an interactive multi-turn session kept by the gateway (``/help`` inside).
- ``tandem bench``: serving benchmarks against any OpenAI-compatible server (``bench/README.md``).

The client commands talk to ``--address``, else ``$TANDEM_ADDRESS``, else localhost:50051.

Each subcommand lives in its own module and imports its heavy dependencies only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tandem.cli import bench, chat, remote, up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem",
        description="Serve vision-language models as three gRPC services (vision, language, gateway).",
        epilog="Run `tandem <command> --help` for the options of a command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    up.add_parser(commands)
    remote.add_generate_parser(commands)
    chat.add_parser(commands)
    bench.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``tandem`` console script; exits with the command's status."""
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
