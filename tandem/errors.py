"""The domain error vocabulary shared by every service.

Code below the servicers raises these; one interceptor (``tandem.serving.interceptor``) maps
them to gRPC status codes. Messages are written for the caller: they say what to change and
never carry internals (tracebacks, reprs, addresses, host names).
"""

from __future__ import annotations

import grpc


class TandemError(Exception):
    """Base of the vocabulary; ``code`` is the gRPC status the caller sees."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(TandemError):
    """The request cannot be served as sent (bad image, too large, bad parameters)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(TandemError):
    """A session or image id the caller named does not exist (or expired)."""

    code = grpc.StatusCode.NOT_FOUND


class Overloaded(TandemError):
    """Admission refused: queue or concurrency limit reached; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(TandemError):
    """Not ready, draining, or a dependency is down; retry, possibly elsewhere."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(TandemError):
    """The caller's deadline passed before the work finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Conflict(TandemError):
    """The resource is busy (e.g. another turn of the same session is running)."""

    code = grpc.StatusCode.ABORTED


class PreconditionFailed(TandemError):
    """The request contradicts what it refers to (e.g. a request id reused with another input)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(TandemError):
    """Missing or wrong credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


GENERIC_INTERNAL_MESSAGE = "internal error; the server log has the details"
