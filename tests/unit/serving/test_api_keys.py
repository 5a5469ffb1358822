"""API keys name tenants: where they come from (flags, environment, a keys file or a mounted
Secret directory, TANDEM_AUTH_TOKEN), how a bearer token finds its tenant, and what the workers
accept (their internal token, never a public key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from llm_service.config import LlmConfig
from tandem.serving.api_keys import ApiKeys, load_api_keys
from tandem.serving.config import ServerConfig
from tandem.serving.options import parse_config


def test_a_bearer_token_names_its_tenant() -> None:
    keys = ApiKeys.parse(["alice=tokA", "bob=tokB", "alice=tokA2"])
    assert keys.tenant_of("Bearer tokA") == keys.tenant_of(b"Bearer tokA2") == "alice"
    assert keys.tenant_of("bearer tokB") == "bob"
    assert keys.tenant_of("Bearer tokC") is None
    assert keys.tenant_of("tokA") is None and keys.tenant_of("") is None and keys.tenant_of(None) is None
    assert keys.tenant_of("Bearer tokA tokB") is None


def test_keys_never_show_their_tokens() -> None:
    keys = ApiKeys.parse(["alice=s3cret-token"])
    assert "s3cret" not in repr(keys) and "alice" in repr(keys)
    config = GatewayConfig(api_key=("alice=s3cret-token",), auth_token="s3cret-2", internal_token="s3cret-3")
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    "entries",
    [["alice"], ["=tok"], ["alice="], ["bad name=tok"], ["alice:x=tok"], ["a=tok", "b=tok"], ["a=to k"]],
)
def test_malformed_keys_are_refused(entries: list[str]) -> None:
    with pytest.raises(ValueError):
        ApiKeys.parse(entries)


def test_a_keys_file_and_a_secret_directory(tmp_path: Path) -> None:
    listing = tmp_path / "keys.txt"
    listing.write_text("# tenants\nalice=tokA\n\n bob = tokB \n")
    assert ApiKeys.from_file(listing).tenant_of("Bearer tokB") == "bob"
    secret = tmp_path / "secret"
    (secret / "..2024_01_01").mkdir(parents=True)  # what a Kubernetes Secret volume holds
    (secret / "..2024_01_01" / "carol").write_text("tokC\n")
    (secret / "carol").symlink_to(secret / "..2024_01_01" / "carol")
    (secret / "dave").write_text("tokD")
    keys = ApiKeys.from_file(secret)
    assert keys.tenants == {"carol", "dave"} and keys.tenant_of("Bearer tokC") == "carol"


def test_every_source_together(tmp_path: Path) -> None:
    listing = tmp_path / "keys"
    listing.write_text("bob=tokB\n")
    keys = load_api_keys(["alice=tokA"], str(listing), "legacy")
    assert keys.tenants == {"alice", "bob", "default"} and keys.tenant_of("Bearer legacy") == "default"
    assert not load_api_keys([], None, None)


def test_api_key_flags_repeat_and_replace_the_environment() -> None:
    env = {"TANDEM_API_KEYS": "alice=tokA,bob=tokB"}
    assert parse_config(GatewayConfig, [], "", env).api_key == ("alice=tokA", "bob=tokB")
    flags = ["--api-key", "carol=tokC", "--api-key", "dave=tokD"]
    config = parse_config(GatewayConfig, flags, "", env)
    assert config.api_key == ("carol=tokC", "dave=tokD")
    assert config.api_keys().tenants == {"carol", "dave"}
    with pytest.raises(ValueError):
        GatewayConfig(api_key=("no-token",))


def test_workers_take_the_internal_token_instead_of_the_public_one() -> None:
    worker = ServerConfig(auth_token="public", internal_token="internal")
    assert worker.worker_keys().tenant_of("Bearer internal") is not None
    assert worker.worker_keys().tenant_of("Bearer public") is None
    assert ServerConfig(auth_token="older").worker_keys().tenant_of("Bearer older") is not None
    assert not ServerConfig().worker_keys()
    env = {"TANDEM_INTERNAL_TOKEN": "internal", "TANDEM_AUTH_TOKEN": "public"}
    assert parse_config(LlmConfig, ["--model", "m"], "", env).worker_keys().tenants == {"internal"}
    gateway = GatewayConfig(auth_token="public", internal_token="internal", downstream_auth_token="old")
    assert gateway.downstream_token() == "internal"
    assert GatewayConfig(downstream_auth_token="old").downstream_token() == "old"
