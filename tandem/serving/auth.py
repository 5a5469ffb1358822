"""Bearer-token authentication for every method except the health service, and the caller's tenant.

Kubernetes probes call ``grpc.health.v1.Health`` without credentials, so health stays open;
every other method, streaming ones included, needs ``authorization: Bearer <token>`` with one
of the server's ``ApiKeys``. The key names the call's tenant: the interceptor binds it for the
handler (``current_tenant()``; the gateway's servicer passes it on explicitly) and writes it on
the request context, so the access-log line names it. Unknown or missing tokens are
UNAUTHENTICATED. The workers' servers hold one internal key, the gateway's the public ones.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

import grpc
from grpc import aio

from tandem.serving import request_context
from tandem.serving.api_keys import ANONYMOUS, ApiKeys
from tandem.serving.handlers import rewrap

_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
_TENANT: ContextVar[str] = ContextVar("tandem_tenant", default=ANONYMOUS)
REFUSED = "missing or wrong bearer token in the 'authorization' metadata"


def current_tenant() -> str:
    """The tenant of the call being served (``""`` without API keys, or outside a call)."""
    return _TENANT.get()


@contextlib.contextmanager
def serving_tenant(tenant: str) -> Iterator[None]:
    """Bind ``tenant`` to the current task for the body, and name it on the request context."""
    token = _TENANT.set(tenant)
    if (context := request_context.current()) is not None:
        context.tenant = tenant
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # a stream abandoned and closed from another context
            _TENANT.reset(token)


def _refuse(message: str) -> grpc.RpcMethodHandler:
    async def deny(request: object, context: aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return grpc.unary_unary_rpc_method_handler(deny)


def _bound(behavior: Callable[..., Any], tenant: str) -> Callable[..., Any]:
    """``behavior`` (a handler of any call type) run with ``tenant`` bound."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            with serving_tenant(tenant):
                async with contextlib.aclosing(behavior(request, context)) as items:
                    async for item in items:
                        yield item

        return stream

    async def call(request: Any, context: aio.ServicerContext) -> Any:
        with serving_tenant(tenant):
            return await behavior(request, context)

    return call


def _with_tenant(handler: grpc.RpcMethodHandler, tenant: str) -> grpc.RpcMethodHandler:
    return rewrap(
        handler, unary=lambda b, _kind: _bound(b, tenant), stream=lambda b, _kind: _bound(b, tenant)
    )


class AuthInterceptor(aio.ServerInterceptor):
    """Refuses calls without a known key (constant-time lookup); binds the key's tenant.

    ``keys`` may be a bare token: one key of the tenant ``default``.
    """

    def __init__(self, keys: ApiKeys | str):
        self.keys = ApiKeys.single(keys) if isinstance(keys, str) else keys
        if not self.keys:
            raise ValueError("AuthInterceptor needs at least one key")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method.startswith(_OPEN_PREFIXES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        tenant = self.keys.tenant_of(metadata.get("authorization"))
        if tenant is None:
            return _refuse(REFUSED)
        handler = await continuation(handler_call_details)
        return handler if handler is None else _with_tenant(handler, tenant)
