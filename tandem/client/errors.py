"""Typed exceptions of the Python client, one per gRPC status the gateway returns.

Every error keeps the status code (``.code``, a ``grpc.StatusCode``) and the server's message
(``.details``), so callers can branch on the type and still log what the server said::

    try:
        pipe.chat("hi", session="gone")
    except NotFound as exc:
        print(exc.code, exc.details)

Problems the client detects before sending (an unreadable file, an unknown prompt shape) raise
``InvalidArgument`` too, which is also a ``ValueError``.
"""

from __future__ import annotations

import grpc


class TandemClientError(Exception):
    """Base of the client's errors: a gRPC status code and the server's message."""

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None):
        super().__init__(details)
        self.details = details
        self.code = code if code is not None else self.default_code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class InvalidArgument(TandemClientError, ValueError):
    """The request cannot be served as sent (bad image, bad parameters, unknown prompt shape)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(TandemClientError):
    """A session or image id does not exist (or expired)."""

    default_code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(TandemClientError):
    """The server is at capacity, or a message exceeded a size limit; retry later."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(TandemClientError):
    """The gateway is not ready, draining, unreachable, or a service behind it is down."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(TandemClientError):
    """The call's timeout passed before the answer was complete."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(TandemClientError):
    """Missing or wrong bearer token."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TandemClientError):
    """The credentials are valid but not allowed to do this."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class Aborted(TandemClientError):
    """A conflicting call is running (e.g. another turn of the same session)."""

    default_code = grpc.StatusCode.ABORTED


class Cancelled(TandemClientError):
    """The call was cancelled."""

    default_code = grpc.StatusCode.CANCELLED


class Unimplemented(TandemClientError):
    """The server does not offer this method (an older or different gateway)."""

    default_code = grpc.StatusCode.UNIMPLEMENTED


class Internal(TandemClientError):
    """The server failed; its log has the details."""

    default_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[TandemClientError]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unauthenticated,
        PermissionDenied,
        Aborted,
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def error_for(code: grpc.StatusCode, details: str) -> TandemClientError:
    """The typed error for ``code``; ``TandemClientError`` itself for codes without a subclass."""
    cls = _BY_CODE.get(code, TandemClientError)
    return cls(details, code)


def from_rpc_error(exc: grpc.RpcError) -> TandemClientError:
    """Translate a ``grpc.RpcError`` (sync or ``grpc.aio``) into the typed error."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else ""
    return error_for(code or grpc.StatusCode.UNKNOWN, details or "")
