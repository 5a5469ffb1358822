"""Every conversion between protos and the gateway's own domain values, in one place.

Public API messages (``gateway_pb2``) become ``gateway.messages`` values in the servicer; the
internal ``common_pb2`` messages are built here for the downstream clients and for the stored
``SessionRecord``. The values the gateway shares with the workers (role, finish reason, usage,
model info, image refs) convert through ``tandem.wire.convert``. Malformed client input (a role
or part left unset) is ``InvalidInput``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vlm.v1 import common_pb2, gateway_pb2

from gateway.messages import Chunk, ImageRef, ImageSource, Message, Part, Role, Sampling
from gateway.sessions import CommittedTurn, SessionState
from tandem.errors import InvalidInput
from tandem.wire.convert import (
    finish_from_pb,
    finish_to_pb,
    image_ref_from_pb,
    image_ref_to_pb,
    role_from_pb,
    role_to_pb,
    usage_from_pb,
    usage_to_pb,
)

MAX_REQUEST_ID_LENGTH = 128

# --- public requests -------------------------------------------------------------------------


def request_id_from_pb(request_id: str) -> str:
    """A client's request id: at most ``MAX_REQUEST_ID_LENGTH`` printable ASCII characters.

    It is stored with every committed turn and written to logs, so its size and alphabet are
    bounded; empty means none (the gateway makes one).
    """
    if len(request_id) > MAX_REQUEST_ID_LENGTH or not (request_id.isascii() and request_id.isprintable()):
        raise InvalidInput(
            f"request_id must be at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters "
            f"(got {len(request_id)} characters)"
        )
    return request_id


def image_source_from_pb(image: gateway_pb2.ImageSource) -> ImageSource:
    which = image.WhichOneof("source")
    if which == "data":
        return ImageSource(data=image.data, media_type=image.media_type)
    if which == "url":
        return ImageSource(url=image.url)
    if which == "image_id":
        return ImageSource(image_id=image.image_id)
    raise InvalidInput("an image part has no source: set data, url or image_id")


def parts_from_pb(parts: Iterable[gateway_pb2.Part]) -> tuple[Part, ...]:
    out: list[Part] = []
    for part in parts:
        which = part.WhichOneof("kind")
        if which == "text":
            out.append(part.text)
        elif which == "image":
            out.append(image_source_from_pb(part.image))
        else:
            raise InvalidInput("a message part is empty: set text or image")
    return tuple(out)


def _role(role: common_pb2.Role) -> Role:
    name = role_from_pb(role)
    if name is None:
        raise InvalidInput("every message needs a role: system, user or assistant")
    return name


def messages_from_pb(messages: Iterable[gateway_pb2.ChatMessage]) -> list[Message]:
    return [Message(_role(m.role), parts_from_pb(m.parts)) for m in messages]


def sampling_from_pb(s: common_pb2.SamplingParams) -> Sampling:
    return Sampling(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        repetition_penalty=s.repetition_penalty,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        stop_token_ids=tuple(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
    )


# --- internal messages -----------------------------------------------------------------------


def sampling_to_pb(s: Sampling) -> common_pb2.SamplingParams:
    out = common_pb2.SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        repetition_penalty=s.repetition_penalty,
        stop=list(s.stop),
        stop_token_ids=list(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
    )
    if s.seed is not None:
        out.seed = s.seed
    return out


def message_to_pb(message: Message) -> common_pb2.Message:
    """An encoded message (text and ``ImageRef`` parts) as the language service takes it."""
    out = common_pb2.Message(role=role_to_pb(message.role))
    for part in message.parts:
        if isinstance(part, str):
            out.parts.add(text=part)
        elif isinstance(part, ImageRef):
            out.parts.add(image=image_ref_to_pb(part))
        else:
            raise TypeError("images must be encoded before they reach the language service")
    return out


def message_from_pb(message: common_pb2.Message) -> Message:
    parts: list[Part] = []
    for part in message.parts:
        parts.append(part.text if part.WhichOneof("kind") == "text" else image_ref_from_pb(part.image))
    return Message(role_from_pb(message.role) or "user", tuple(parts))


# --- public responses ------------------------------------------------------------------------


def _stream_fields(chunk: Chunk) -> dict[str, Any]:
    """The fields ``GenerateResponse`` and ``ChatResponse`` share."""
    return {
        "text": chunk.text,
        "token_ids": list(chunk.token_ids),
        "finish_reason": finish_to_pb(chunk.finish_reason),
        "usage": None if chunk.usage is None else usage_to_pb(chunk.usage),
        "image_ids": list(chunk.image_ids),
    }


def generate_response(chunk: Chunk) -> gateway_pb2.GenerateResponse:
    return gateway_pb2.GenerateResponse(**_stream_fields(chunk))


def chat_response(chunk: Chunk) -> gateway_pb2.ChatResponse:
    return gateway_pb2.ChatResponse(**_stream_fields(chunk), replayed=chunk.replayed)


def history_message(message: Message) -> gateway_pb2.HistoryMessage:
    out = gateway_pb2.HistoryMessage(role=role_to_pb(message.role))
    for part in message.parts:
        if isinstance(part, str):
            out.parts.add(text=part)
        elif isinstance(part, ImageRef):
            out.parts.add(image_id=part.image_id)
    return out


def session_to_pb(state: SessionState, with_history: bool = True) -> gateway_pb2.Session:
    """The API view of a session: image ids only, never pixels or embeddings."""
    out = gateway_pb2.Session(
        session_id=state.session_id,
        created_at_ms=state.created_at_ms,
        updated_at_ms=state.updated_at_ms,
        ttl_seconds=state.ttl_seconds,
    )
    if with_history:
        out.messages.extend(history_message(m) for m in state.messages)
    return out


# --- stored sessions -------------------------------------------------------------------------


def _turn_to_pb(turn: CommittedTurn) -> gateway_pb2.CommittedTurn:
    return gateway_pb2.CommittedTurn(
        request_id=turn.request_id,
        text=turn.text,
        token_ids=list(turn.token_ids),
        finish_reason=finish_to_pb(turn.finish_reason),
        usage=usage_to_pb(turn.usage),
        image_ids=list(turn.image_ids),
        input_digest=turn.input_digest,
    )


def _turn_from_pb(turn: gateway_pb2.CommittedTurn) -> CommittedTurn:
    return CommittedTurn(
        request_id=turn.request_id,
        text=turn.text,
        token_ids=tuple(turn.token_ids),
        finish_reason=finish_from_pb(turn.finish_reason) or "stop",
        usage=usage_from_pb(turn.usage),
        image_ids=tuple(turn.image_ids),
        input_digest=turn.input_digest,
    )


def encode_session(state: SessionState) -> bytes:
    """The stored ``SessionRecord``; ``session.messages`` stays empty (derived from ``messages``)."""
    record = gateway_pb2.SessionRecord(session=session_to_pb(state, with_history=False), tenant=state.tenant)
    record.messages.extend(message_to_pb(m) for m in state.messages)
    record.turns.extend(_turn_to_pb(t) for t in state.turns)
    return record.SerializeToString(deterministic=True)


def decode_session(value: bytes) -> SessionState:
    record = gateway_pb2.SessionRecord.FromString(value)
    return SessionState(
        session_id=record.session.session_id,
        created_at_ms=record.session.created_at_ms,
        updated_at_ms=record.session.updated_at_ms,
        ttl_seconds=record.session.ttl_seconds,
        messages=tuple(message_from_pb(m) for m in record.messages),
        turns=tuple(_turn_from_pb(t) for t in record.turns),
        tenant=record.tenant,
    )
