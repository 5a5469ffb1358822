"""Image bytes in, upright RGB out: format allow-list, limits, and normalisation.

Two steps, so that a cache hit never decodes:

- ``sniff`` (cheap, on the event loop): size limit, magic-byte format detection against the
  allow-list (PNG, JPEG, WebP, GIF, BMP) and the caller's media type checked against the magic.
- ``decode`` (in the preprocessing pool): open lazily with only the detected decoder, check the
  pixel count and aspect ratio from the header before anything is decompressed, then load,
  apply the EXIF orientation, take the first frame of an animation, and convert any mode to RGB
  with transparency composited on white. 16/32-bit and float images are scaled to 8 bits in
  bands of rows, so the conversion adds about one byte per pixel, never a float copy of the
  whole image.

Every failure is ``InvalidInput`` with a message that says what to change; Pillow's global
``MAX_IMAGE_PIXELS`` is never touched (its bomb warning is turned into an error per call).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from tandem.errors import InvalidInput

log = logging.getLogger(__name__)

# Pillow format name -> accepted media types (the first one is canonical).
FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": ("image/png",),
    "JPEG": ("image/jpeg", "image/jpg", "image/pjpeg"),
    "WEBP": ("image/webp",),
    "GIF": ("image/gif",),
    "BMP": ("image/bmp", "image/x-bmp", "image/x-ms-bmp"),
}
_BMP_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
BACKGROUND = (255, 255, 255)
_SUPPORTED = "PNG, JPEG, WebP, GIF or BMP"
_BAND_PIXELS = 1 << 18  # pixels converted at a time from a high bit depth (float32: 1 MiB)


@dataclass(frozen=True)
class MediaLimits:
    """What one image may cost before it is decoded."""

    max_bytes: int
    max_pixels: int
    max_aspect_ratio: float


def detect_format(data: bytes) -> str | None:
    """Pillow format name of ``data`` from its magic bytes, or None when not allow-listed."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if (
        len(data) >= 18
        and data.startswith(b"BM")
        and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES
    ):
        return "BMP"
    return None


def sniff(data: bytes, media_type: str, limits: MediaLimits) -> str:
    """Check size, format and media type without decoding; returns the Pillow format name."""
    if not data:
        raise InvalidInput("image data is empty; send the bytes of a PNG, JPEG, WebP, GIF or BMP file")
    if len(data) > limits.max_bytes:
        raise InvalidInput(f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    fmt = detect_format(data)
    if fmt is None:
        raise InvalidInput(f"unsupported or unrecognised image format; send {_SUPPORTED}")
    check_media_type(media_type, fmt)
    return fmt


def check_media_type(media_type: str, fmt: str) -> None:
    """Refuse a declared media type that is unknown or disagrees with the file's magic bytes."""
    declared = media_type.split(";", 1)[0].strip().lower()
    if not declared:
        return
    if not any(declared in types for types in FORMATS.values()):
        raise InvalidInput(f"unsupported media type {declared[:64]!r}; send {_SUPPORTED}")
    if declared not in FORMATS[fmt]:
        raise InvalidInput(
            f"media type {declared!r} does not match the file contents ({FORMATS[fmt][0]}); "
            "fix the media type or send the right file"
        )


def decode(data: bytes, fmt: str, limits: MediaLimits) -> Image.Image:
    """Decode ``data`` (already sniffed as ``fmt``) into an upright RGB image."""
    try:
        # catch_warnings is process-wide in Python 3.11; overlapping calls from pool threads can
        # at worst leave this one filter (bomb warning -> error) in place, which is what we want.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=[fmt])
            check_size(image.size, limits)
            image.load()
            image = ImageOps.exif_transpose(image)
    except InvalidInput:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"image claims too many pixels; the limit is {limits.max_pixels}") from exc
    except Exception as exc:  # any decoder failure on hostile bytes is the caller's bad input
        log.info("decode of a %s image failed: %s", fmt, type(exc).__name__)
        raise InvalidInput(f"could not decode the {fmt} image: the file is corrupt or truncated") from exc
    return to_rgb(image)


def check_size(size: tuple[int, int], limits: MediaLimits) -> None:
    """Refuse empty, too large or too elongated images (called before pixels are decoded)."""
    width, height = size
    if width < 1 or height < 1:
        raise InvalidInput(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise InvalidInput(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}; "
            "send a smaller image"
        )
    if max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise InvalidInput(
            f"image is {width}x{height}; the aspect ratio limit is {limits.max_aspect_ratio:g}:1; "
            "crop or pad the image"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on a white background."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _high_depth_to_rgb(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"unsupported colour mode {image.mode}; send an RGB or greyscale image") from exc


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit RGB, scaling 16-bit ranges down (not clipping).

    Converted a band of rows at a time into one 8-bit array: the extra memory is that array plus
    one band, whatever the image size (a whole-image float64 copy was 8 bytes per pixel, twice).
    """
    scale = np.float32(1.0 if image.mode == "F" else 257.0)
    width, height = image.size
    grey = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        band = np.array(image.crop((0, top, width, bottom)), dtype=np.float32)
        np.divide(band, scale, out=band)
        np.rint(band, out=band)
        np.clip(band, 0, 255, out=band)
        grey[top:bottom] = band
    return Image.fromarray(grey).convert("RGB")
