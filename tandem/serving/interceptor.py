"""One interceptor that turns domain errors into gRPC statuses for every method.

Servicers hold no ``try/except``: a ``TandemError`` becomes its status code with its message,
``asyncio.CancelledError`` propagates (the call is gone), and anything else is logged with its
traceback and reaches the caller as INTERNAL with a generic message.

A request whose bytes do not parse as the method's message is INVALID_ARGUMENT "malformed
request". grpc.aio runs the request deserializer outside any handler and answers its exception
with UNKNOWN and the exception's repr, so the interceptor wraps the deserializer: a parse
failure becomes the ``MALFORMED`` marker, which the wrapped handler refuses before the servicer
sees anything.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from tandem.errors import GENERIC_INTERNAL_MESSAGE, TandemError
from tandem.serving.handlers import rewrap

log = logging.getLogger(__name__)

MALFORMED_MESSAGE = "malformed request: the message does not parse as this method's request type"


class _Malformed:
    """The request of a call whose bytes did not parse (see the module docstring)."""

    def __repr__(self) -> str:
        return "MALFORMED"


MALFORMED = _Malformed()


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize``, returning ``MALFORMED`` instead of raising on bytes that do not parse."""
    if deserialize is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception:
            return MALFORMED

    return parse


async def _refuse_malformed(context: aio.ServicerContext, method: str) -> None:
    log.info("%s -> INVALID_ARGUMENT: the request did not parse", method)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and caller-facing message for an exception raised by a handler."""
    if isinstance(exc, TandemError):
        return exc.code, str(exc) or exc.code.name.lower()
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if isinstance(exc, NotImplementedError):  # a generated servicer's default method body
        return grpc.StatusCode.UNIMPLEMENTED, "method not implemented"
    return grpc.StatusCode.INTERNAL, GENERIC_INTERNAL_MESSAGE


async def _abort(context: aio.ServicerContext, method: str, exc: Exception) -> None:
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("unhandled error in %s", method)
    else:
        log.info("%s -> %s: %s", method, code.name, message)
    await context.abort(code, message)


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        if request is MALFORMED:
            await _refuse_malformed(context, method)
        try:
            return await behavior(request, context)
        except (asyncio.CancelledError, aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, method, exc)

    return handler


def _wrap_stream(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):
        # A coroutine that streams with ``context.write`` (e.g. grpc's own Health.Watch).
        return _wrap_unary(behavior, method)

    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        if request is MALFORMED:
            await _refuse_malformed(context, method)
        try:
            async for item in behavior(request, context):
                yield item
        except (asyncio.CancelledError, aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, method, exc)

    return handler


class ErrorInterceptor(aio.ServerInterceptor):
    """Maps exceptions of unary-unary and unary-stream handlers to statuses, and requests that
    do not parse to INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        return rewrap(
            handler,
            unary=lambda behavior, _kind: _wrap_unary(behavior, method),
            stream=lambda behavior, _kind: _wrap_stream(behavior, method),
            request_deserializer=_tolerant(handler.request_deserializer),
        )
