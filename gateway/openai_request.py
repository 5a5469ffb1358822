"""The body of ``POST /v1/chat/completions`` -> the gateway's domain values, validated.

Accepted (OpenAI Chat Completions): ``model`` (may be left out: the served model), ``messages``
(roles ``system``/``developer``, ``user``, ``assistant``; content a string or ``text`` /
``image_url`` parts, ``detail`` ignored), ``max_completion_tokens`` (or the older
``max_tokens``), ``temperature`` (OpenAI's default 1.0; 0 is greedy), ``top_p``, ``stop`` (a
string or a list), ``seed``, ``n`` (only 1), ``stream``, ``stream_options.include_usage``.
Extensions, as vLLM accepts them: ``top_k``, ``repetition_penalty``, ``stop_token_ids``,
``ignore_eos`` (a boolean: the model's end-of-sequence ids do not end generation), and
``session_id`` (server-side history: only the last user message is used, the session supplies
the rest). Features the server does not have (tools, logprobs, penalties, logit bias, structured
output) are refused, never silently dropped. Unknown fields are ignored. Text the wire cannot
carry is refused here, not when the downstream proto is built: a lone UTF-16 surrogate (a JSON
``\\ud800`` escape without its pair) in any forwarded string, a ``stop_token_ids`` entry beyond
uint32. Every refusal is ``InvalidRequest`` naming the parameter."""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from gateway.messages import ImageSource, Message, Part, Sampling
from tandem.errors import InvalidInput
from tandem.wire.types import role_from_name

_MAX_STOP = 16
_INLINE_PARSE_BYTES = 1 << 20  # larger bodies (base64 images) are parsed in a thread
_MAX_SEED = 2**64 - 1
_MAX_TOKEN_ID = 2**32 - 1  # the proto's uint32
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON can escape one; no UTF-8 can carry it
_REFUSED_IF_SET = {
    "tools": "tool calling is not supported",
    "functions": "function calling is not supported",
    "logit_bias": "logit_bias is not supported",
    "audio": "audio output is not supported",
}


class InvalidRequest(InvalidInput):
    """A bad request body; ``param`` names the offending field (OpenAI's error ``param``)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ChatCompletionRequest:
    """A validated chat completion request (``model`` empty: the request named none)."""

    model: str
    messages: tuple[Message, ...]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    session_id: str | None = None

    def __repr__(self) -> str:
        return f"ChatCompletionRequest(messages={len(self.messages)}, stream={self.stream})"

    def turn(self) -> tuple[Part, ...]:
        """The last user message's parts: the new turn of a server-side session."""
        last = self.messages[-1]
        if last.role != "user":
            raise InvalidRequest("with session_id, the last message must be the new user turn", "messages")
        return last.parts


def _get(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    """``body[name]`` checked against ``kinds`` (``null`` counts as absent; bools are not numbers)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise InvalidRequest(f"'{name}' must be a number, not a boolean", name)
    if not isinstance(value, kinds):
        raise InvalidRequest(f"'{name}' has the wrong type ({type(value).__name__})", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"'{name}' must be a finite number", name)
    return value


def _text(value: str, param: str) -> str:
    """``value``, unless it holds a lone surrogate (``"\\ud800"`` in JSON): not Unicode text."""
    if _LONE_SURROGATE.search(value):
        raise InvalidRequest(
            f"'{param}' holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair); "
            "send valid Unicode text",
            param,
        )
    return value


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = float(_get(body, name, (int, float), default))
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}; got {value}", name)
    return value


def _part(part: Any, where: str) -> Part:
    if not isinstance(part, dict):
        raise InvalidRequest("each content part must be an object", where)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest("a text part needs a string 'text'", where)
        return _text(text, where)
    if kind == "image_url":
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str) or not url:
            raise InvalidRequest("an image_url part needs image_url.url (an http(s) or data: URL)", where)
        return ImageSource(url=_text(url, where))
    raise InvalidRequest(f"unsupported content part type {kind!r}; use 'text' or 'image_url'", where)


def _message(message: Any, index: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest("each message must be an object with 'role' and 'content'", where)
    name = message.get("role")
    role = role_from_name(name)
    if role is None:
        raise InvalidRequest(f"unsupported role {str(name)[:32]!r}; use system, user or assistant", where)
    content = message.get("content")
    if isinstance(content, str):
        return Message(role, (_text(content, where),))
    if isinstance(content, list):
        return Message(role, tuple(_part(p, f"{where}.content[{i}]") for i, p in enumerate(content)))
    if content is None and role == "assistant":
        return Message(role, ())
    raise InvalidRequest("message content must be a string or a list of parts", where)


def _messages(body: dict[str, Any]) -> tuple[Message, ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'messages' must be a non-empty list", "messages")
    return tuple(_message(m, i) for i, m in enumerate(raw))


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise InvalidRequest("'stop' must be a non-empty string or a list of them", "stop")
    if len(items) > _MAX_STOP:
        raise InvalidRequest(f"at most {_MAX_STOP} stop strings", "stop")
    return tuple(_text(s, "stop") for s in items)


def _int(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = _get(body, name, int)
    if value is not None and not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}; got {value}", name)
    return value


def _sampling(body: dict[str, Any]) -> Sampling:
    max_tokens = _int(body, "max_completion_tokens", 1, 2**31) or _int(body, "max_tokens", 1, 2**31)
    stop_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(
        type(i) is int and 0 <= i <= _MAX_TOKEN_ID for i in stop_ids
    ):
        raise InvalidRequest(
            f"'stop_token_ids' must be a list of token ids (integers from 0 to {_MAX_TOKEN_ID})",
            "stop_token_ids",
        )
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise InvalidRequest("'top_p' must be > 0 (use temperature 0 for greedy decoding)", "top_p")
    return Sampling(
        max_new_tokens=max_tokens or 0,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p,
        top_k=_int(body, "top_k", 0, 2**31) or 0,
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        seed=_int(body, "seed", 0, _MAX_SEED),
        stop=_stop(body),
        stop_token_ids=tuple(stop_ids),
        ignore_eos=_get(body, "ignore_eos", bool, False),
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name, why in _REFUSED_IF_SET.items():
        if body.get(name):
            raise InvalidRequest(why, name)
    if body.get("n") not in (None, 1):
        raise InvalidRequest("only n=1 is supported: send one request per choice", "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise InvalidRequest("logprobs are not supported", "logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0:
            raise InvalidRequest(f"{name} is not supported; use repetition_penalty", name)
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise InvalidRequest("only response_format {'type': 'text'} is supported", "response_format")


async def parse_json(raw: bytes) -> Any:
    """A request body's JSON value; ``InvalidRequest`` when it is not JSON (or nested too deep)."""
    try:
        if len(raw) <= _INLINE_PARSE_BYTES:
            return json.loads(raw)
        return await asyncio.to_thread(json.loads, raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("the request body is not valid JSON") from None


def parse_chat_completion(body: Any, session_header: str | None = None) -> ChatCompletionRequest:
    """Validate a decoded JSON body (and the ``X-Tandem-Session`` header) into a request."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is None:
        model = ""
    elif not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a model id (see GET /v1/models) or left out", "model")
    _text(model, "model")
    _refuse_unsupported(body)
    options = _get(body, "stream_options", dict, {})
    session_id = _text(_get(body, "session_id", str) or session_header or "", "session_id") or None
    return ChatCompletionRequest(
        model=model,
        messages=_messages(body),
        sampling=_sampling(body),
        stream=bool(_get(body, "stream", bool, False)),
        include_usage=bool(options.get("include_usage", False)),
        session_id=session_id,
    )
