"""``data:`` URIs carrying base64 images (the OpenAI ``image_url`` form), checked before decoding.

Accepted: ``data:image/<subtype>[;param=value...];base64,<payload>``. The decoded size is
estimated from the payload length (``len * 3 / 4``) and refused before any decoding when it
exceeds the cap; the payload must be strict base64 (no whitespace or foreign characters).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from tandem.errors import InvalidInput

_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True)
class DataUri:
    """A decoded ``data:`` URI."""

    media_type: str
    data: bytes

    def __repr__(self) -> str:
        return f"DataUri({self.media_type}, <{len(self.data)} bytes>)"


def is_data_uri(url: str) -> bool:
    return url[:5].lower() == "data:"


def decoded_size(payload_length: int) -> int:
    """Upper bound of the bytes a base64 payload of this length decodes to."""
    return (payload_length * 3 + 3) // 4


def parse_data_uri(url: str, max_bytes: int) -> DataUri:
    """Split, check and decode a base64 image data URI; refusals say what to change."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise InvalidInput("the data URI has no ',' between its header and its content")
    params = [p.strip() for p in header.split(";")]
    media_type = params[0].lower()
    if "base64" not in (p.lower() for p in params[1:]):
        raise InvalidInput("image data URIs must be base64 encoded: data:image/png;base64,...")
    if not _MEDIA_TYPE.fullmatch(media_type) or not media_type.startswith("image/"):
        raise InvalidInput("the data URI's media type must be an image type such as image/png or image/jpeg")
    size = decoded_size(len(payload))
    if size > max_bytes:
        raise InvalidInput(
            f"the image in the data URI is too large (about {size} bytes; at most {max_bytes})"
        )
    if not payload:
        raise InvalidInput("the data URI holds no image data")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("the data URI's content is not valid base64") from None
    return DataUri(media_type, data)
