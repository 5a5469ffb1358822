"""Prompt forms of the LMDeploy-style interface -> ``vlm.v1`` messages.

One prompt is any of:

* ``"text"``: one user message;
* ``("text", image)`` or ``("text", [image, ...])``: one user message, images first, then text
  (``(image, "text")`` is accepted too when the first element is unambiguously an image, i.e.
  not a ``str``);
* an OpenAI ``messages`` list: dicts with ``"role"`` (``system``/``developer``, ``user``,
  ``assistant``) and ``"content"`` (a string, or parts ``{"type": "text", "text": ...}``,
  ``{"type": "image_url", "image_url": {"url": ...}}`` and ``{"type": "image", "image": <any
  image form>}``);
* a list of content parts (dicts with ``"type"``): one user message.

A batch is a ``list`` of prompts; ``is_batch`` tells the two apart by shape (a messages list is a
list of dicts with ``"role"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlm.v1 import gateway_pb2

from tandem.client.errors import InvalidArgument
from tandem.client.images import is_image, to_image_source
from tandem.wire.convert import role_to_pb
from tandem.wire.types import role_from_name


def _is_dict_list(value: object, key: str) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and key in m for m in value)


def is_messages(prompt: object) -> bool:
    """True for an OpenAI ``messages`` list (dicts with ``"role"``)."""
    return _is_dict_list(prompt, "role")


def is_content_parts(prompt: object) -> bool:
    """True for a list of content parts (dicts with ``"type"``) making one user message."""
    return _is_dict_list(prompt, "type") and not is_messages(prompt)


def is_batch(prompts: object) -> bool:
    """True for a list of prompts, as opposed to one prompt."""
    return isinstance(prompts, list) and not is_messages(prompts) and not is_content_parts(prompts)


def _image_list(value: object) -> list[object] | None:
    """``value`` as a list of images, or None when it is not image-shaped."""
    if is_image(value) or isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(is_image(v) or isinstance(v, str) for v in value):
        return list(value)
    return None


def _text_image_parts(prompt: tuple[Any, ...]) -> list[gateway_pb2.Part]:
    if len(prompt) != 2:
        raise InvalidArgument(f"a tuple prompt is (text, image or images); got {len(prompt)} elements")
    first, second = prompt
    if isinstance(first, str):
        text, images = first, _image_list(second)
    elif isinstance(second, str) and not isinstance(first, str) and _image_list(first) is not None:
        text, images = second, _image_list(first)
    else:
        raise InvalidArgument("a tuple prompt is (text, image or images) or (image, text)")
    if images is None:
        raise InvalidArgument(f"unsupported image value of type {type(second).__name__} in a tuple prompt")
    parts = [gateway_pb2.Part(image=to_image_source(image)) for image in images]
    return [*parts, gateway_pb2.Part(text=text)]


def _image_url_part(part: dict[str, Any]) -> gateway_pb2.Part:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise InvalidArgument('an "image_url" part needs {"image_url": {"url": "<http(s) or data: URL>"}}')
    return gateway_pb2.Part(image=to_image_source(url))


def _content_part(part: object) -> gateway_pb2.Part:
    if not isinstance(part, dict):
        raise InvalidArgument(f"a content part must be a dict, got {type(part).__name__}")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidArgument('a "text" part needs a string "text"')
        return gateway_pb2.Part(text=text)
    if kind == "image_url":
        return _image_url_part(part)
    if kind == "image":
        return gateway_pb2.Part(image=to_image_source(part.get("image")))
    raise InvalidArgument(f'unsupported content part type {kind!r}: use "text", "image_url" or "image"')


def content_parts(content: object) -> list[gateway_pb2.Part]:
    """A message's ``content`` (a string or a list of parts) -> ``Part`` messages."""
    if isinstance(content, str):
        return [gateway_pb2.Part(text=content)]
    if isinstance(content, list):
        return [_content_part(part) for part in content]
    kind = type(content).__name__
    raise InvalidArgument(f"message content must be a string or a list of parts, got {kind}")


def _message(message: dict[str, Any]) -> gateway_pb2.ChatMessage:
    role = role_from_name(message.get("role"))
    if role is None:
        raise InvalidArgument(f"unsupported role {message.get('role')!r}: use system, user or assistant")
    return gateway_pb2.ChatMessage(role=role_to_pb(role), parts=content_parts(message.get("content")))


def user_parts(prompt: object) -> list[gateway_pb2.Part]:
    """One user turn (text, a tuple, content parts, or a one-user-message list) -> parts."""
    if isinstance(prompt, str):
        return [gateway_pb2.Part(text=prompt)]
    if isinstance(prompt, tuple):
        return _text_image_parts(prompt)
    if is_content_parts(prompt):
        return content_parts(prompt)
    if is_messages(prompt):
        messages: Sequence[dict[str, Any]] = prompt  # type: ignore[assignment]
        if len(messages) != 1 or messages[0].get("role") != "user":
            raise InvalidArgument("a chat turn is one user message; the session keeps the history")
        return content_parts(messages[0].get("content"))
    raise InvalidArgument(
        f"unsupported prompt of type {type(prompt).__name__}: give text, (text, images), "
        "an OpenAI messages list or a list of content parts"
    )


def to_messages(prompt: object) -> list[gateway_pb2.ChatMessage]:
    """One prompt in any accepted form -> the conversation ``GenerateRequest.messages`` holds."""
    if is_messages(prompt):
        return [_message(message) for message in prompt]  # type: ignore[attr-defined]
    return [gateway_pb2.ChatMessage(role=role_to_pb("user"), parts=user_parts(prompt))]
