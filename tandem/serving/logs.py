"""One log setup for every service: text or JSON lines, each with the current request id.

``configure_logging(level, fmt)`` is called once by each service's ``__main__``
(``--log-level``, ``--log-format``). Every line carries ``request_id`` (``-`` outside a request;
see ``tandem.serving.request_context``). ``text``: ``time level logger [request_id] message``.
``json``: one object per line with ``time``, ``level``, ``logger``, ``request_id``,
``message`` (and ``exception``); an access-log line (logger ``tandem.access``) adds its fields
(method, status, duration, tokens, ...) as keys of the object.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from tandem.serving.request_context import current_request_id

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
ACCESS_LOGGER = "tandem.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` to the current request's id (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``record.access`` (a dict) is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out.update(access)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def handler(fmt: LogFormat = "text") -> logging.Handler:
    """A stderr handler in ``fmt`` that adds request ids."""
    out = logging.StreamHandler()
    out.addFilter(RequestIdFilter())
    out.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return out


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Log ``level`` and up to stderr, as ``fmt`` (one of ``LOG_FORMATS``) lines with request
    ids (once per process)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"{fmt=} must be one of {LOG_FORMATS}")
    logging.basicConfig(level=level.upper(), handlers=[handler("json" if fmt == "json" else "text")])
