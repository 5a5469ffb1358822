"""``python -m vision_service``: serve one VLM's vision half over gRPC until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from tandem.models.checkpoint import resolve
from tandem.serving.app import run_service
from tandem.serving.logs import configure_logging
from tandem.serving.options import parse_config
from vision_service.adapters import UnsupportedModel, adapter_for, architecture_of
from vision_service.app import VisionApp
from vision_service.config import VisionConfig

log = logging.getLogger("vision_service")

DESCRIPTION = """Tandem vision service: images -> embeddings (vision tower + projector only),
cached in Redis by the sha256 of the image bytes. Health reports SERVING once the weights are
loaded and warmed up. Flags override environment variables."""


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(VisionConfig, argv, DESCRIPTION)
    configure_logging(config.log_level, config.log_format)
    try:
        adapter_for(architecture_of(resolve(config.model, config.revision)))
    except (UnsupportedModel, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    try:
        run_service(lambda tracing: VisionApp(config, tracing=tracing), "tandem-vision")
    except Exception:
        log.exception("vision service failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
