"""Bearer-token authentication for every method except the health service.

Kubernetes probes call ``grpc.health.v1.Health`` without credentials, so health stays open;
every other method, streaming ones included, needs ``authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import grpc
from grpc import aio

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def _refuse(message: str) -> grpc.RpcMethodHandler:
    async def deny(request: object, context: aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(deny)


class AuthInterceptor(aio.ServerInterceptor):
    """Refuses calls whose bearer token does not match (constant-time comparison)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method.startswith(_OPEN_PREFIXES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        given_bytes = given.encode() if isinstance(given, str) else given
        if not hmac.compare_digest(given_bytes, self._expected):
            return _refuse("missing or wrong bearer token in the 'authorization' metadata")
        return await continuation(handler_call_details)
