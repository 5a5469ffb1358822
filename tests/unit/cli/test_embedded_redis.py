"""``tandem up``'s Redis roles (issue 11, findings 3 to 5): a persistent, never-evicting state
Redis under ``--data-dir`` and a bounded LRU cache by default; ``--redis-url`` for both roles
unless ``--state-redis-url`` is given; one ``tandem up`` per data folder; the gateway gets both
URLs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from tandem.cli import build_parser
from tandem.cli import up as up_command
from tandem.cli.embedded_redis import default_data_dir, plan
from tandem.cli.services import ConfigError
from tandem.serving.options import parse_config

EXTERNAL = "redis://cache.example:6379/0"
STATE = "redis://state.example:6379/0"


def up_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["up", *argv])


def test_the_data_folder_follows_xdg(tmp_path: Path) -> None:
    assert default_data_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "tandem"
    assert default_data_dir({}) == Path.home() / ".local" / "share" / "tandem"
    assert default_data_dir({"XDG_DATA_HOME": "relative"}) == Path.home() / ".local" / "share" / "tandem"


def test_by_default_state_persists_and_the_cache_is_bounded(tmp_path: Path) -> None:
    roles = plan(up_args("--data-dir", str(tmp_path / "data")))
    try:
        state, cache = roles.embedded
        assert roles.data_dir == (tmp_path / "data").resolve()
        assert state.server.data_dir == roles.data_dir / "redis" and state.server.maxmemory is None
        assert "--appendonly" in (args := state.server._role_args()) and "noeviction" in args
        assert cache.server.maxmemory == "1gb" and "allkeys-lru" in cache.server._role_args()
        assert roles.state_url == state.server.url != roles.cache_url == cache.server.url
        with pytest.raises(ConfigError, match="another `tandem up` uses the data folder"):
            plan(up_args("--data-dir", str(tmp_path / "data")))
    finally:
        roles.close(lambda line: None)
    plan(up_args("--data-dir", str(tmp_path / "data"))).close(lambda line: None)  # free again


def test_redis_url_serves_both_roles_unless_a_state_url_is_given(tmp_path: Path) -> None:
    both = plan(up_args("--redis-url", EXTERNAL))
    assert (both.state_url, both.cache_url, both.embedded, both.data_dir) == (EXTERNAL, EXTERNAL, [], None)
    split = plan(up_args("--redis-url", EXTERNAL, "--state-redis-url", STATE))
    assert (split.state_url, split.cache_url, split.embedded) == (STATE, EXTERNAL, [])
    state_only = plan(up_args("--state-redis-url", STATE, "--redis-maxmemory", "64mb"))
    assert state_only.state_url == STATE and [r.server.maxmemory for r in state_only.embedded] == ["64mb"]


def test_the_gateway_gets_the_cache_and_state_urls_and_restarts_on_its_http_port(tmp_path: Path) -> None:
    args = up_args("--device", "cpu")
    spec = up_command.gateway_spec(args, "/m", EXTERNAL, {"llm": 1}, tmp_path, STATE)
    config = parse_config(GatewayConfig, list(spec.command[3:]), "gateway", env={})
    assert (config.redis_url, config.state_url) == (EXTERNAL, STATE)
    assert spec.restart_pins == {"--http-port": tmp_path / "gateway.http-port"}
