"""A throw-away TLS identity for tests of TLS listeners (made with the ``openssl`` command)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """``(key, cert)``: a new key and a one-day certificate for ``localhost``, written to ``folder``;
    the certificate is its own root, so a client trusts it by loading ``cert``."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert
