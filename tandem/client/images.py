"""Turn the image forms a Python user has into ``vlm.v1.ImageSource`` messages.

Accepted forms:

* ``PIL.Image.Image``: encoded here as PNG (Pillow is imported only when one is given);
* ``bytes`` / ``bytearray`` / ``memoryview``: an encoded image file, sent as is;
* ``pathlib.Path`` or a ``str`` path (or a ``file://`` URL): the file is read here;
* ``http://`` / ``https://`` URLs and ``data:`` URIs: sent as ``url``; the gateway fetches or
  decodes them behind its media guard (size, type and SSRF checks), as for any other client;
* ``ImageId("<sha256>")``: an image sent earlier, by the id a response returned.

The client sends bytes where it can, so the gateway never needs access to the client's files.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from vlm.v1 import gateway_pb2

from tandem.client.errors import InvalidArgument

_URL_PREFIXES = ("http://", "https://", "data:")


@dataclass(frozen=True)
class ImageId:
    """An image the gateway already holds, named by the id a previous response returned."""

    value: str

    def __str__(self) -> str:
        return self.value


def is_pil_image(obj: object) -> bool:
    """True for a Pillow image, without importing Pillow."""
    return any(cls.__module__.startswith("PIL.") and cls.__name__ == "Image" for cls in type(obj).__mro__)


def is_image(obj: object) -> bool:
    """True for every accepted image form except ``str`` (which may be text or a path)."""
    return isinstance(obj, bytes | bytearray | memoryview | Path | ImageId) or is_pil_image(obj)


def _pil_to_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from exc


def _from_str(text: str) -> gateway_pb2.ImageSource:
    if text.startswith(_URL_PREFIXES):
        return gateway_pb2.ImageSource(url=text)
    if text.startswith("file://"):
        return gateway_pb2.ImageSource(data=_read_file(Path(unquote(urlparse(text).path))))
    return gateway_pb2.ImageSource(data=_read_file(Path(text).expanduser()))


def to_image_source(image: object) -> gateway_pb2.ImageSource:
    """One image in any accepted form -> ``ImageSource``; ``InvalidArgument`` otherwise."""
    if isinstance(image, ImageId):
        return gateway_pb2.ImageSource(image_id=image.value)
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        if not data:
            raise InvalidArgument("image bytes are empty")
        return gateway_pb2.ImageSource(data=data)
    if isinstance(image, Path):
        return gateway_pb2.ImageSource(data=_read_file(image.expanduser()))
    if isinstance(image, str):
        return _from_str(image)
    if is_pil_image(image):
        return gateway_pb2.ImageSource(data=_pil_to_png(image), media_type="image/png")
    raise InvalidArgument(
        f"unsupported image type {type(image).__name__}: give a PIL image, bytes, a path, "
        "an http(s) URL, a data: URI or an ImageId"
    )
