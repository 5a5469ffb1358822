"""``vlm.v1`` messages <-> ``tandem.wire.types`` values: one ``from_pb``/``to_pb`` pair per type.

Enum zero values (``ROLE_UNSPECIFIED``, ``FINISH_REASON_UNSPECIFIED``) become ``None``; each
caller decides what a missing role means (an error for a request, a default for stored data).
"""

from __future__ import annotations

from vlm.v1 import common_pb2, vision_pb2

from tandem.wire.types import FinishReason, ImageInput, ImageRef, ModelInfo, Role, Usage

_ROLES: dict[common_pb2.Role, Role] = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
}
_ROLES_PB = {name: value for value, name in _ROLES.items()}
_FINISH: dict[common_pb2.FinishReason, FinishReason] = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_CANCELLED: "cancelled",
}
_FINISH_PB = {name: value for value, name in _FINISH.items()}


def role_from_pb(role: common_pb2.Role) -> Role | None:
    """The message's role; None for ``ROLE_UNSPECIFIED`` (or a value this build does not know)."""
    return _ROLES.get(role)


def role_to_pb(role: Role) -> common_pb2.Role:
    return _ROLES_PB[role]


def finish_from_pb(reason: common_pb2.FinishReason) -> FinishReason | None:
    """Why a generation ended; None while it runs (``FINISH_REASON_UNSPECIFIED``)."""
    return _FINISH.get(reason)


def finish_to_pb(reason: FinishReason | None) -> common_pb2.FinishReason:
    return common_pb2.FINISH_REASON_UNSPECIFIED if reason is None else _FINISH_PB[reason]


def usage_from_pb(usage: common_pb2.Usage) -> Usage:
    return Usage(usage.prompt_tokens, usage.image_tokens, usage.completion_tokens, usage.cached_tokens)


def usage_to_pb(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        image_tokens=usage.image_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
    )


def model_info_from_pb(info: common_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(info.model, info.architecture, info.is_vlm, info.fingerprint, info.context_length)


def model_info_to_pb(info: ModelInfo) -> common_pb2.ModelInfo:
    return common_pb2.ModelInfo(
        model=info.model,
        architecture=info.architecture,
        is_vlm=info.is_vlm,
        fingerprint=info.fingerprint,
        context_length=info.context_length,
    )


def image_input_from_pb(image: vision_pb2.ImageInput) -> ImageInput:
    """An unset ``source`` gives an ``ImageInput`` with neither bytes nor id (the service refuses it)."""
    source = image.WhichOneof("source")
    if source == "data":
        return ImageInput(data=image.data, media_type=image.media_type)
    if source == "image_id":
        return ImageInput(image_id=image.image_id, media_type=image.media_type)
    return ImageInput(media_type=image.media_type)


def image_input_to_pb(image: ImageInput) -> vision_pb2.ImageInput:
    if image.data is not None:
        return vision_pb2.ImageInput(data=image.data, media_type=image.media_type)
    return vision_pb2.ImageInput(image_id=image.image_id, media_type=image.media_type)


def image_ref_from_pb(ref: common_pb2.ImageRef) -> ImageRef:
    return ImageRef(ref.image_id, ref.num_tokens, tuple(ref.grid_thw), ref.inline_record)


def image_ref_to_pb(ref: ImageRef) -> common_pb2.ImageRef:
    return common_pb2.ImageRef(
        image_id=ref.image_id,
        num_tokens=ref.num_tokens,
        grid_thw=list(ref.grid_thw),
        inline_record=ref.inline_record,
    )
