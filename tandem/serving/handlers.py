"""Rebuilding a gRPC method handler around a wrapped behaviour: what every interceptor does.

An ``aio.ServerInterceptor`` gets the method's ``RpcMethodHandler`` and returns another one with
the same codecs whose behaviour is wrapped. ``rewrap`` does that once for the four call kinds:
``unary`` wraps the behaviours that return one response (unary-unary, stream-unary), ``stream``
those that yield responses (unary-stream, stream-stream); each wrapper also gets the kind's name
as gRPC metrics spell it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Wrap = Callable[[Callable[..., Any], str], Callable[..., Any]]


def rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Wrap,
    stream: Wrap,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped; ``request_deserializer`` replaces the handler's."""
    codecs: dict[str, Any] = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary, "unary"), **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream, "server_stream"), **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary, "client_stream"), **codecs)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream, "bidi_stream"), **codecs)
    return handler
