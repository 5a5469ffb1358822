"""API keys: bearer tokens that name tenants, and the places a deployment lists them.

Keys come from ``--api-key NAME=TOKEN`` (repeatable; or ``TANDEM_API_KEYS="alice=tokA,bob=tokB"``),
from a keys file (``--api-keys-file``/``TANDEM_API_KEYS_FILE``: one ``name=token`` per line,
``#`` comments allowed; or a directory holding one file per tenant, named by the tenant and
holding its token, which is how a Kubernetes Secret mounts), and from ``TANDEM_AUTH_TOKEN``
(one key of the tenant ``default``). All of them together are the deployment's keys. Without
any key there is no authentication and every call belongs to the anonymous tenant ``""``.

A tenant may hold several keys (rotation); a token names one tenant only. ``tenant_of``
compares the token a caller sent with every key, without stopping at a match, using
``hmac.compare_digest``: the time it takes tells neither which key matched nor how much of one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ANONYMOUS = ""  # the tenant of every call when no key is configured
DEFAULT_TENANT = "default"  # the tenant of TANDEM_AUTH_TOKEN
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: fits an HTTP header and gRPC metadata


def check_tenant(name: str) -> str:
    """``name`` if it is a valid tenant name (letters, digits, ``._-``; at most 64), else ValueError."""
    if not _TENANT.fullmatch(name):
        raise ValueError(
            f"tenant name {name[:64]!r} must be 1-64 letters, digits, '.', '_' or '-' (starting "
            "with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class ApiKeys:
    """The deployment's keys as (tenant, token) pairs; its ``repr`` names tenants, never tokens."""

    entries: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        tokens: dict[str, str] = {}
        for tenant, token in self.entries:
            check_tenant(tenant)
            if not _TOKEN.fullmatch(token):
                raise ValueError(f"the key of tenant {tenant!r} must be visible ASCII without spaces")
            if tokens.setdefault(token, tenant) != tenant:
                raise ValueError(f"tenants {tokens[token]!r} and {tenant!r} have the same key")

    def __repr__(self) -> str:
        return f"ApiKeys(tenants={sorted(self.tenants)})"

    def __bool__(self) -> bool:
        return bool(self.entries)

    @property
    def tenants(self) -> set[str]:
        return {tenant for tenant, _ in self.entries}

    def tenant_of(self, authorization: str | bytes | None) -> str | None:
        """The tenant whose key ``authorization`` ("Bearer TOKEN") carries, or None."""
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        scheme, _, token = (authorization or "").strip().partition(" ")
        given = token.strip().encode("latin-1", "replace") if scheme.lower() == "bearer" else b""
        given_digest = hashlib.sha256(given).digest()
        found = None
        for tenant, expected in self.entries:  # every key, every time: constant in the match
            expected_digest = hashlib.sha256(expected.encode()).digest()  # equal lengths: no length leak
            if hmac.compare_digest(given_digest, expected_digest) and found is None:
                found = tenant
        return found

    def merged(self, *others: ApiKeys) -> ApiKeys:
        """These keys and ``others``' together (a token listed twice for one tenant counts once)."""
        pairs = [*self.entries, *(pair for other in others for pair in other.entries)]
        return ApiKeys(tuple(dict.fromkeys(pairs)))

    @classmethod
    def single(cls, token: str | None, tenant: str = DEFAULT_TENANT) -> ApiKeys:
        """One key (none when ``token`` is empty)."""
        return cls(((tenant, token),)) if token else cls()

    @classmethod
    def parse(cls, items: Iterable[str], source: str = "--api-key") -> ApiKeys:
        """Keys from ``NAME=TOKEN`` items; ``source`` names where they came from in errors."""
        pairs = []
        for item in items:
            name, sep, token = item.strip().partition("=")
            if not sep or not name.strip() or not token.strip():
                raise ValueError(f"{source}: expected NAME=TOKEN, got an entry without one")
            pairs.append((name.strip(), token.strip()))
        return cls(tuple(pairs))

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        """Keys from a ``name=token`` file, or from a directory of files named by tenant."""
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
            return cls(tuple((p.name, p.read_text().strip()) for p in files))
        lines = [line.strip() for line in path.read_text().splitlines()]
        return cls.parse((line for line in lines if line and not line.startswith("#")), str(path))


def load_api_keys(items: Iterable[str], keys_file: str | None, auth_token: str | None) -> ApiKeys:
    """Every key of a deployment: ``items`` (NAME=TOKEN), the keys file, and ``auth_token``."""
    keys = ApiKeys.parse(items)
    if keys_file:
        keys = keys.merged(ApiKeys.from_file(keys_file))
    return keys.merged(ApiKeys.single(auth_token))
