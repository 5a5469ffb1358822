"""How the client reaches the gateway: address, TLS, bearer token, deadlines, message sizes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import grpc
from grpc import aio

DEFAULT_ADDRESS = "localhost:50051"
ADDRESS_ENV = "TANDEM_ADDRESS"


def default_address(env: Mapping[str, str] | None = None) -> str:
    """The gateway a client talks to when given no address: ``$TANDEM_ADDRESS`` (host:port),
    else ``localhost:50051``. Read when a client is made, never at import."""
    return (os.environ if env is None else env).get(ADDRESS_ENV, "").strip() or DEFAULT_ADDRESS


class ConnectionArgs(TypedDict, total=False):
    """The connection keywords both pipelines take (see ``ClientOptions``)."""

    token: str | None
    tls: bool
    root_certificates: bytes | str | Path | None
    timeout: float | None
    max_concurrency: int
    max_message_bytes: int


@dataclass(frozen=True)
class ClientOptions:
    """Connection settings of a pipeline.

    ``root_certificates`` (PEM bytes or a file path) turns TLS on; ``tls=True`` alone uses the
    system's trusted roots. ``token`` is sent as ``authorization: Bearer <token>`` metadata on
    every call. ``timeout`` is the default deadline in seconds of each call (a whole streamed
    answer included); ``None`` waits as long as it takes. ``max_concurrency`` bounds the calls a
    batch keeps in flight.
    """

    address: str = DEFAULT_ADDRESS
    token: str | None = None
    tls: bool = False
    root_certificates: bytes | str | Path | None = None
    timeout: float | None = None
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrency: int = 64

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("address must be host:port of a Tandem gateway")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"{self.timeout=} must be > 0 (or None)")
        if self.max_concurrency < 1:
            raise ValueError(f"{self.max_concurrency=} must be >= 1")
        if self.max_message_bytes < 1024 * 1024:
            raise ValueError(f"{self.max_message_bytes=} must be >= 1 MiB")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.root_certificates is not None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token when one is set."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _roots(self) -> bytes | None:
        if self.root_certificates is None or isinstance(self.root_certificates, bytes):
            return self.root_certificates
        return Path(self.root_certificates).read_bytes()

    def open_channel(self) -> aio.Channel:
        """A ``grpc.aio`` channel; call it inside the event loop that will use it."""
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        if self.uses_tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._roots())
            return aio.secure_channel(self.address, credentials, options=options)
        return aio.insecure_channel(self.address, options=options)
