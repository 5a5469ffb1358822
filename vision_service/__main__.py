"""``python -m vision_service``: serve one VLM's vision half over gRPC.

The server starts at once with health NOT_SERVING, loads the vision tower and projector, warms
up, reports SERVING, and drains on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from tandem.models.checkpoint import resolve
from tandem.serving.bootstrap import GrpcServer, ServerOptions, configure_logging, run_until_signal
from tandem.serving.options import parse_config
from vision_service.adapters import UnsupportedModel, adapter_for, architecture_of
from vision_service.config import VisionConfig
from vision_service.service import VisionService
from vision_service.servicer import SERVICE_NAME, VisionServicer

log = logging.getLogger("vision_service")

DESCRIPTION = """Tandem vision service: images -> embeddings (vision tower + projector only),
cached in Redis by the sha256 of the image bytes. Flags override environment variables."""


async def serve(config: VisionConfig) -> None:
    """Run the service until SIGTERM/SIGINT."""
    servicer = VisionServicer()
    server = GrpcServer(ServerOptions.from_config(config), [servicer.register], [SERVICE_NAME])
    loaded: list[VisionService] = []

    async def warmup() -> None:
        service = await VisionService.start(config)
        loaded.append(service)
        servicer.attach(service)

    async def shutdown() -> None:
        for service in loaded:
            await service.close()

    try:
        await run_until_signal(server, warmup, shutdown)
    finally:
        await server.drain()


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(VisionConfig, argv, DESCRIPTION)
    configure_logging(config.log_level)
    try:
        adapter_for(architecture_of(resolve(config.model, config.revision)))
    except (UnsupportedModel, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    try:
        asyncio.run(serve(config))
    except Exception:
        log.exception("vision service failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
