"""Log lines carry the request id; ``--log-format json`` writes one object per line with the
access-log fields as keys; every service takes ``--log-format`` and ``--metrics-port``."""

from __future__ import annotations

import io
import json
import logging

import pytest

from tandem.cli.up import CONFIGS, config_class
from tandem.serving import request_context
from tandem.serving.access_log import log_access
from tandem.serving.logs import ACCESS_LOGGER, JsonFormatter, configure_logging, handler
from tandem.serving.options import parse_config


def _capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    log_handler = handler("json" if fmt == "json" else "text")
    log_handler.setStream(out)  # type: ignore[attr-defined]
    logger = logging.getLogger(f"tandem.test_logs.{fmt}")
    logger.handlers, logger.propagate = [log_handler], False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_text_lines_carry_the_current_request_id() -> None:
    logger, out = _capture("text")
    logger.info("outside")
    token = request_context.bind(request_context.RequestContext("req-42", "/m"))
    try:
        logger.info("inside %d", 1)
    finally:
        request_context.unbind(token)
    first, second = out.getvalue().splitlines()
    assert first.endswith("INFO tandem.test_logs.text [-]: outside")
    assert second.endswith("INFO tandem.test_logs.text [req-42]: inside 1")


def test_json_access_lines_have_their_fields_as_keys() -> None:
    logger, out = _capture("json")
    access = logging.getLogger(ACCESS_LOGGER)
    access.addHandler(logger.handlers[0])
    old, access.level = access.level, logging.INFO
    try:
        context = request_context.RequestContext("req-7", "/vlm.v1.GatewayService/Generate")
        context.usage(12, 3)
        context.ttft_seconds = 0.0421
        log_access(context, "grpc", context.method, "OK", 0.25)
    finally:
        access.removeHandler(logger.handlers[0])
        access.setLevel(old)
    line = json.loads(out.getvalue())
    assert line["logger"] == ACCESS_LOGGER and line["level"] == "INFO" and line["request_id"] == "req-7"
    assert line["message"] == (
        "grpc /vlm.v1.GatewayService/Generate OK 250.0ms prompt_tokens=12 completion_tokens=3 ttft_ms=42.1"
    )
    expected = {"protocol": "grpc", "status": "OK", "duration_ms": 250.0, "tenant": "", "ttft_ms": 42.1}
    assert expected.items() <= line.items() and line["time"].endswith("+00:00")


def test_json_lines_keep_tracebacks() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), exc_info=True)
        record.exc_info = __import__("sys").exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed" and "ValueError: bad" in line["exception"]


def test_probes_are_logged_at_debug() -> None:
    context = request_context.RequestContext("p", "/grpc.health.v1.Health/Check")
    records: list[logging.LogRecord] = []
    access = logging.getLogger(ACCESS_LOGGER)
    collect = logging.Handler()
    collect.emit = records.append  # type: ignore[method-assign]
    access.addHandler(collect)
    old, access.level = access.level, logging.DEBUG
    try:
        log_access(context, "grpc", context.method, "OK", 0.001)
        log_access(context, "http", "/healthz", "200", 0.001)
    finally:
        access.removeHandler(collect)
        access.setLevel(old)
    assert [r.levelno for r in records] == [logging.DEBUG, logging.DEBUG]


def test_configure_logging_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="fmt"):
        configure_logging("INFO", "xml")


@pytest.mark.parametrize("service", sorted(CONFIGS))
def test_every_service_takes_log_format_and_metrics_port(service: str) -> None:
    cls = config_class(service)
    argv = ["--log-format", "json", "--metrics-port", "9090"]
    argv += [] if service == "gateway" else ["--model", "m"]
    config = parse_config(cls, argv, service, env={})
    assert (config.log_format, config.metrics_port) == ("json", 9090)
    from_env = parse_config(
        cls, argv[4:], service, env={"TANDEM_LOG_FORMAT": "json", "TANDEM_METRICS_PORT": "1"}
    )
    assert (from_env.log_format, from_env.metrics_port) == ("json", 1)
    defaults = parse_config(cls, argv[4:], service, env={})
    assert (defaults.log_format, defaults.metrics_port) == ("text", 0)
    with pytest.raises(SystemExit):
        parse_config(cls, [*argv[4:], "--log-format", "xml"], service, env={})
