"""``python -m gateway``: run the public gateway until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from gateway.app import GatewayApp, StartupError
from gateway.config import GatewayConfig
from gateway.openai_http import OpenAIHttpServer, options_from_config
from tandem.serving.bootstrap import configure_logging, run_until_signal
from tandem.serving.options import parse_config

DESCRIPTION = """\
Tandem gateway: the public gRPC API (vlm.v1.GatewayService) in front of the vision and
language services. Sessions live in Redis; image URLs are fetched under SSRF guards.
Health (grpc.health.v1) is NOT_SERVING until the language service (and, for a VLM, the
vision service) answered.
"""


log = logging.getLogger("gateway")


async def serve(config: GatewayConfig) -> None:
    """Run the gRPC (and optional HTTP) listeners until SIGTERM/SIGINT; drained whatever happens."""
    app = GatewayApp(config)
    http = OpenAIHttpServer(app.gateway, options_from_config(config)) if config.http_port >= 0 else None

    async def warmup() -> None:
        if http is not None:
            await http.start()
        await app.warmup()

    async def shutdown() -> None:
        if http is not None:
            await http.stop()
        await app.shutdown()

    try:
        await run_until_signal(app.server, warmup, shutdown)
    finally:
        await app.server.drain()


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(GatewayConfig, argv, DESCRIPTION)
    configure_logging(config.log_level)
    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
