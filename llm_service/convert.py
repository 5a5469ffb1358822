"""The edge: ``vlm.v1`` messages <-> the worker's typed values. Nothing below imports ``*_pb2``."""

from __future__ import annotations

import uuid

import numpy as np
from vlm.v1 import common_pb2, llm_pb2

from llm_service.conversation import ChatMessage, GenerationRequest, Part, TextPart
from llm_service.engine import SamplingConfig, TokenEvent
from tandem.embeddings.cache import is_image_id
from tandem.errors import InvalidInput
from tandem.wire.convert import finish_to_pb, image_ref_from_pb, model_info_to_pb, role_from_pb, usage_to_pb
from tandem.wire.types import ModelInfo

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256


def _decimal(value: float) -> float:
    """A proto ``float`` as the decimal it was sent as (0.01 arrives as 0.0099999998)."""
    return float(str(np.float32(value)))


def sampling_from_pb(params: common_pb2.SamplingParams, default_max_new_tokens: int) -> SamplingConfig:
    """Zeros mean defaults: max_new_tokens -> the server's, top_p and repetition_penalty -> 1.

    Out-of-range values are ``InvalidInput``; a tiny temperature is raised to the engine's
    minimum (``SamplingConfig``).
    """
    if len(params.stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in params.stop):
        raise InvalidInput(f"at most {MAX_STOP_STRINGS} stop strings of up to {MAX_STOP_LENGTH} characters")
    try:
        return SamplingConfig(
            max_new_tokens=params.max_new_tokens or default_max_new_tokens,
            temperature=_decimal(params.temperature),
            top_p=_decimal(params.top_p) or 1.0,
            top_k=params.top_k,
            repetition_penalty=_decimal(params.repetition_penalty) or 1.0,
            seed=params.seed if params.HasField("seed") else None,
            stop=tuple(params.stop),
            stop_token_ids=tuple(params.stop_token_ids),
            ignore_eos=params.ignore_eos,
        )
    except ValueError as exc:
        raise InvalidInput(f"invalid sampling parameters: {str(exc).replace('self.', '')}") from None


def _part_from_pb(part: common_pb2.ContentPart) -> Part:
    kind = part.WhichOneof("kind")
    if kind == "text":
        return TextPart(part.text)
    if kind == "image":
        if not is_image_id(part.image.image_id):
            raise InvalidInput("image_id must be the 64 hex digits the vision service returned")
        return image_ref_from_pb(part.image)
    raise InvalidInput("a content part must be text or an image")


def messages_from_pb(messages: list[common_pb2.Message]) -> tuple[ChatMessage, ...]:
    if not messages:
        raise InvalidInput("messages must not be empty")
    out = []
    for index, message in enumerate(messages):
        role = role_from_pb(message.role)
        if role is None:
            raise InvalidInput(f"message {index} has no role (system, user or assistant)")
        out.append(ChatMessage(role, tuple(_part_from_pb(p) for p in message.parts)))
    return tuple(out)


def request_from_pb(request: llm_pb2.GenerateTokensRequest, default_max_new_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=request.request_id or uuid.uuid4().hex,
        messages=messages_from_pb(list(request.messages)),
        sampling=sampling_from_pb(request.sampling, default_max_new_tokens),
        session_id=request.session_id or None,
        clamp_to_context=request.sampling.max_new_tokens == 0,
        tenant=request.tenant,
    )


def event_to_pb(event: TokenEvent) -> llm_pb2.GenerateTokensResponse:
    response = llm_pb2.GenerateTokensResponse(
        text=event.text, token_ids=event.token_ids, finish_reason=finish_to_pb(event.finish_reason)
    )
    if event.usage is not None:
        response.usage.CopyFrom(usage_to_pb(event.usage))
    return response


def info_to_pb(info: ModelInfo) -> llm_pb2.GetLanguageInfoResponse:
    return llm_pb2.GetLanguageInfoResponse(info=model_info_to_pb(info))
