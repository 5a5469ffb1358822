"""OpenAI-shaped JSON the HTTP endpoint writes: completions, stream chunks, usage and errors.

Errors follow OpenAI's body ``{"error": {"message", "type", "param", "code"}}`` with the HTTP
status of the domain error: invalid input 400, unknown model or session 404, busy session 409,
a request id (``Idempotency-Key``) reused with another input 422, overload 429, bad token 401,
not ready / dependency down 503, deadline 504, anything else 500 with a generic message.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.messages import FinishReason, Usage
from tandem.errors import (
    GENERIC_INTERNAL_MESSAGE,
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    Overloaded,
    PreconditionFailed,
    TandemError,
    Unauthenticated,
    Unavailable,
)


class ModelNotFound(NotFound):
    """The request names a model this gateway does not serve (OpenAI's ``model_not_found``)."""

    param = "model"


# domain error -> (HTTP status, OpenAI error type, error code); subclasses before their bases
_ERRORS: list[tuple[type[TandemError], int, str, str]] = [
    (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (InvalidInput, 400, "invalid_request_error", "invalid_value"),
    (NotFound, 404, "invalid_request_error", "not_found"),
    (Conflict, 409, "invalid_request_error", "conflict"),
    (PreconditionFailed, 422, "invalid_request_error", "idempotency_key_reused"),
    (Overloaded, 429, "rate_limit_error", "overloaded"),
    (Unauthenticated, 401, "authentication_error", "invalid_api_key"),
    (Unavailable, 503, "server_error", "unavailable"),
    (DeadlineExceeded, 504, "server_error", "timeout"),
]


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_for(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """HTTP status and OpenAI error body for an exception raised while serving a request."""
    if isinstance(exc, TimeoutError):
        exc = DeadlineExceeded("deadline exceeded")
    for cls, status, kind, code in _ERRORS:
        if isinstance(exc, cls):
            message = str(exc) or code.replace("_", " ")
            return status, error_body(message, kind, code, getattr(exc, "param", None))
    return 500, error_body(GENERIC_INTERNAL_MESSAGE, "server_error", "internal_error")


def usage_json(usage: Usage | None) -> dict[str, Any]:
    """OpenAI's usage object, with cached prompt tokens in ``prompt_tokens_details``."""
    usage = usage or Usage()
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _finish(reason: FinishReason | None) -> str | None:
    """OpenAI knows ``stop`` and ``length``; a cancelled generation reports ``stop``."""
    return None if reason is None else ("length" if reason == "length" else "stop")


@dataclass
class Completion:
    """Identity of one completion: the same ``id``/``created``/``model`` on all its chunks."""

    model: str
    session_id: str | None = None
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _base(self, obj: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
        if self.session_id:
            out["session_id"] = self.session_id
        return out

    def full(self, text: str, reason: FinishReason | None, usage: Usage | None) -> dict[str, Any]:
        """The ``chat.completion`` object of a non-streamed answer."""
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": _finish(reason),
            "logprobs": None,
        }
        return {**self._base("chat.completion"), "choices": [choice], "usage": usage_json(usage)}

    def chunk(self, delta: dict[str, Any], reason: FinishReason | None = None) -> dict[str, Any]:
        """One ``chat.completion.chunk`` with a delta for choice 0."""
        choice = {"index": 0, "delta": delta, "finish_reason": _finish(reason), "logprobs": None}
        return {**self._base("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self, usage: Usage | None) -> dict[str, Any]:
        """The extra last chunk of ``stream_options.include_usage``: no choices, only usage."""
        return {**self._base("chat.completion.chunk"), "choices": [], "usage": usage_json(usage)}


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event line pair (``data: ...``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
