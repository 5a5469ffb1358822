"""The shared service config: every service takes the same server and Redis flags and variables."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.config import GatewayConfig
from llm_service.config import LlmConfig
from tandem.serving.config import REDIS, SERVER, RedisConfig, ServerConfig, ServiceConfig
from tandem.serving.options import parse_config
from vision_service.config import VisionConfig

SERVICES: dict[str, type[ServiceConfig]] = {
    "GATEWAY": GatewayConfig,
    "LLM": LlmConfig,
    "VISION": VisionConfig,
}
NEEDS_MODEL = {"TANDEM_MODEL": "/models/m"}  # the workers refuse to start without one

SHARED_ENV = {
    "TANDEM_MAX_MESSAGE_BYTES": ("max_message_bytes", "134217728", 128 * 1024 * 1024),
    "TANDEM_GRACE_SECONDS": ("grace_seconds", "2.5", 2.5),
    "TANDEM_REFLECTION": ("reflection", "off", False),
    "TANDEM_AUTH_TOKEN": ("auth_token", "s3cret", "s3cret"),
    "TANDEM_TLS_CERT": ("tls_cert", "/tls/cert.pem", "/tls/cert.pem"),
    "TANDEM_TLS_KEY": ("tls_key", "/tls/key.pem", "/tls/key.pem"),
    "TANDEM_PORT_FILE": ("port_file", "/run/port", "/run/port"),
    "REDIS_URL": ("redis_url", "redis://r:6379/1", "redis://r:6379/1"),
    "TANDEM_CACHE_PREFIX": ("cache_prefix", "pfx", "pfx"),
    "TANDEM_LOG_LEVEL": ("log_level", "DEBUG", "DEBUG"),
}


def options(cls: type[Any], group: str) -> dict[str, tuple[str | None, Any]]:
    """name -> (environment variable, help) of the options in ``group``."""
    return {
        f.name: (f.metadata["env"], f.metadata["help"])
        for f in dataclasses.fields(cls)
        if f.metadata.get("group") == group
    }


def parse(cls: type[ServiceConfig], argv: list[str], env: dict[str, str]) -> Any:
    return parse_config(cls, argv, "test", env={**NEEDS_MODEL, **env})


def test_every_service_takes_the_same_server_and_redis_options() -> None:
    shared = {**options(ServerConfig, SERVER), **options(RedisConfig, REDIS)}
    for service, cls in SERVICES.items():
        found = {**options(cls, SERVER), **options(cls, REDIS)}
        assert found.keys() == shared.keys(), service
        own = {"host": f"TANDEM_{service}_HOST", "port": f"TANDEM_{service}_PORT"}
        assert {name: found[name][0] for name in own} == own
        assert {k: v for k, v in found.items() if k not in own} == {
            k: v for k, v in shared.items() if k not in own
        }


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_reads_the_shared_environment(service: str) -> None:
    env = {name: raw for name, (_, raw, _) in SHARED_ENV.items()}
    config = parse(SERVICES[service], [], env)
    for name, (field, _, value) in SHARED_ENV.items():
        assert getattr(config, field) == value, name


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_flags_beat_the_shared_environment(service: str) -> None:
    env = {"TANDEM_GRACE_SECONDS": "2", "REDIS_URL": "redis://env:6379/0", f"TANDEM_{service}_PORT": "7000"}
    config = parse(SERVICES[service], ["--grace-seconds", "3", "--redis-url", "redis://flag:6379/0"], env)
    assert (config.grace_seconds, config.redis_url, config.port) == (3.0, "redis://flag:6379/0", 7000)


def test_listen_address_variables_are_per_service() -> None:
    env = {"TANDEM_VISION_HOST": "0.0.0.0", "TANDEM_VISION_PORT": "6000"}
    vision = parse(VisionConfig, [], env)
    assert (vision.host, vision.port) == ("0.0.0.0", 6000)
    for cls, port in ((GatewayConfig, 50051), (LlmConfig, 50052)):
        config = parse(cls, [], env)
        assert (config.host, config.port) == ("127.0.0.1", port)


def test_each_service_keeps_its_defaults() -> None:
    gateway, llm, vision = (parse(cls, [], {}) for cls in (GatewayConfig, LlmConfig, VisionConfig))
    assert (gateway.port, llm.port, vision.port) == (50051, 50052, 50053)
    assert (gateway.reflection, llm.reflection, vision.reflection) == (False, True, True)
    assert (gateway.redis_url, llm.redis_url, vision.redis_url) == ("redis://127.0.0.1:6379/0", "", "")
    assert (gateway.redis_timeout_seconds, llm.redis_timeout_seconds) == (2.0, 0.5)
    for config in (gateway, llm, vision):
        assert (config.max_message_bytes, config.grace_seconds, config.cache_prefix) == (
            64 << 20,
            10.0,
            "tandem",
        )
        assert (config.auth_token, config.tls_cert, config.port_file, config.log_level) == (
            None,
            None,
            None,
            "INFO",
        )


def test_tls_from_the_environment_reaches_the_vision_server() -> None:
    from vision_service.app import VisionApp

    config = parse(VisionConfig, [], {"TANDEM_TLS_CERT": "/tls/c.pem", "TANDEM_TLS_KEY": "/tls/k.pem"})
    server_config = VisionApp(config).server.config
    assert (server_config.tls_cert, server_config.tls_key) == ("/tls/c.pem", "/tls/k.pem")


@pytest.mark.parametrize("service", sorted(SERVICES))
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TANDEM_TLS_CERT": "/c.pem"}, "tls_cert and tls_key must be given together"),
        ({"TANDEM_MAX_MESSAGE_BYTES": "1024"}, "must be >= 4 MiB"),
        ({"TANDEM_CACHE_PREFIX": ""}, "cache_prefix must not be empty"),
    ],
)
def test_shared_settings_are_checked_for_every_service(
    capsys: pytest.CaptureFixture[str], service: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(SERVICES[service], [], env)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_help_lists_the_server_and_redis_options(capsys: pytest.CaptureFixture[str], service: str) -> None:
    with pytest.raises(SystemExit):
        parse(SERVICES[service], ["--help"], {})
    out = capsys.readouterr().out
    assert out.index("server options:") < out.index("TANDEM_TLS_CERT")
    assert "redis options:" in out and f"TANDEM_{service}_PORT" in out


def test_choices_are_checked_for_configs_built_in_code() -> None:
    with pytest.raises(ValueError, match="dtype='int8' must be one of"):
        VisionConfig(model="/m", dtype="int8")
    with pytest.raises(ValueError, match="device='tpu' must be one of"):
        LlmConfig(model="/m", device="tpu")
