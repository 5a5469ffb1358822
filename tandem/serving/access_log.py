"""The access log: one line per request a service answered, on the ``tandem.access`` logger.

Text: ``grpc /vlm.v1.GatewayService/Generate OK 812.4ms prompt_tokens=31 completion_tokens=16
ttft_ms=95.2`` (the request id is in the line's prefix, see ``tandem.serving.logs``); JSON: the
same fields as keys (``protocol``, ``method``, ``status``, ``duration_ms``, ``request_id``,
``tenant``, ``prompt_tokens``, ``completion_tokens``, ``ttft_ms``). Health checks, the gateway's
polls of its workers and scrapes are logged at DEBUG, so probes do not drown the requests.
"""

from __future__ import annotations

import logging
from typing import Literal

from tandem.serving.logs import ACCESS_LOGGER
from tandem.serving.request_context import RequestContext

log = logging.getLogger(ACCESS_LOGGER)

Protocol = Literal["grpc", "http"]
# Probes: health checks, reflection, and the model-info calls the gateway polls its workers with.
_QUIET_GRPC = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/vlm.v1.LanguageService/GetLanguageInfo",
    "/vlm.v1.VisionService/GetVisionInfo",
)
_QUIET_HTTP = ("/healthz", "/metrics")


def is_quiet(protocol: Protocol, path: str) -> bool:
    """Probes and scrapes: counted in metrics, logged at DEBUG, not traced."""
    if protocol == "grpc":
        return path.startswith(_QUIET_GRPC)
    return path in _QUIET_HTTP


def log_access(
    context: RequestContext, protocol: Protocol, path: str, status: str, duration_seconds: float
) -> None:
    """Write ``context``'s access-log line."""
    fields = {
        "protocol": protocol,
        **context.access_fields(),
        "status": status,
        "duration_ms": round(duration_seconds * 1000, 1),
    }
    extras = " ".join(
        f"{key}={fields[key]}"
        for key in ("tenant", "prompt_tokens", "completion_tokens", "ttft_ms")
        if fields[key] not in (None, "")
    )
    level = logging.DEBUG if is_quiet(protocol, path) else logging.INFO
    log.log(
        level,
        "%s %s %s %.1fms%s",
        protocol,
        context.method,
        status,
        fields["duration_ms"],
        f" {extras}" if extras else "",
        extra={"access": fields, "request_id": context.request_id},
    )
