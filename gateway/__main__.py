"""``python -m gateway``: run the public gateway until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from gateway.app import GatewayApp, StartupError
from gateway.config import GatewayConfig
from tandem.serving.app import run_service
from tandem.serving.logs import configure_logging
from tandem.serving.options import parse_config

DESCRIPTION = """\
Tandem gateway: the public gRPC API (vlm.v1.GatewayService) in front of the vision and
language services. Sessions live in the state Redis (--state-redis-url, never evicting);
image URLs are fetched under SSRF guards. Health (grpc.health.v1) is NOT_SERVING until the
language service (and, for a VLM, the vision service) answered, and while no language replica
answers or the state Redis is down.
"""


log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(GatewayConfig, argv, DESCRIPTION)
    configure_logging(config.log_level, config.log_format)
    try:
        run_service(lambda tracing: GatewayApp(config, tracing=tracing), "tandem-gateway")
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
