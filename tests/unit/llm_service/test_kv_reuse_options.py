"""The worker's KV reuse options: --prefix-cache-bytes, and the deprecated
--session-cache-entries, whose 0 still disables reuse."""

from __future__ import annotations

import pytest

from llm_service.config import LlmConfig
from tandem.serving.options import parse_config


def _parse(*argv: str, env: dict[str, str] | None = None) -> LlmConfig:
    return parse_config(LlmConfig, ["--model", "/m", *argv], "llm", env or {})


def test_the_prefix_cache_is_on_by_default_and_bounded_by_bytes() -> None:
    config = _parse()
    assert config.prefix_cache_bytes == config.kv_reuse_bytes == 512 * 2**20
    assert config.session_cache_entries is None
    assert _parse("--prefix-cache-bytes", "0").kv_reuse_bytes == 0
    assert _parse(env={"TANDEM_PREFIX_CACHE_BYTES": "4096"}).kv_reuse_bytes == 4096


def test_the_deprecated_session_cache_entries_only_switches_reuse_off() -> None:
    assert _parse("--session-cache-entries", "0").kv_reuse_bytes == 0
    assert _parse("--session-cache-entries", "64", "--prefix-cache-bytes", "4096").kv_reuse_bytes == 4096
    with pytest.raises(ValueError, match="session_cache_entries"):
        LlmConfig(model="/m", session_cache_entries=-1)
    with pytest.raises(ValueError, match="prefix_cache_bytes"):
        LlmConfig(model="/m", prefix_cache_bytes=-1)
