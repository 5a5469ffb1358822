"""Decompression bombs and polyglots below the service: vision_service.media (TESTPLAN 15, 18).

Bombs are tiny valid GIF, JPEG and WebP files whose header width/height fields are patched
to huge values; they must be refused with ``InvalidInput`` before any pixel buffer is made
(``ImageFile.load`` is never reached) and without the process's peak memory growing.
Polyglots are files valid (or plausible) in two formats: they are decoded as the format their
magic bytes name, by that one allow-listed Pillow plugin, or refused; never anything else.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator

import pytest
from PIL import Image, ImageFile

from tandem.errors import InvalidInput
from tests.support import ROOT
from vision_service import media

LIMITS = media.MediaLimits(max_bytes=1 << 20, max_pixels=1_000_000, max_aspect_ratio=100.0)
GENEROUS = media.MediaLimits(max_bytes=1 << 20, max_pixels=10**12, max_aspect_ratio=100.0)
SMALL = Image.new("RGB", (8, 8), (10, 200, 30))


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def gif_claiming(width: int, height: int) -> bytes:
    """A tiny GIF whose screen and frame descriptors both claim ``width`` x ``height``."""
    data = bytearray(encoded(SMALL, "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    frame = data.index(b"\x2c", 13)  # image descriptor: ',' left top width height
    data[frame + 5 : frame + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A tiny baseline JPEG whose SOF0 segment claims ``width`` x ``height``."""
    data = bytearray(encoded(SMALL, "JPEG"))
    sof = data.index(b"\xff\xc0")  # marker, length(2), precision(1), height(2), width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    """A tiny lossy (VP8) WebP whose frame header claims ``width`` x ``height`` (max 16383)."""
    data = bytearray(encoded(SMALL, "WEBP", quality=50))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
    data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


def webp_lossless_claiming(width: int, height: int) -> bytes:
    """A tiny lossless (VP8L) WebP whose header claims ``width`` x ``height`` (max 16384)."""
    data = bytearray(encoded(SMALL, "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
    data[21:25] = (bits | (width - 1) | ((height - 1) << 14)).to_bytes(4, "little")
    return bytes(data)


BOMBS: dict[str, Callable[[int, int], bytes]] = {
    "gif": gif_claiming,
    "jpeg": jpeg_claiming,
    "webp": webp_claiming,
    "webp-lossless": webp_lossless_claiming,
}


@pytest.fixture
def loads() -> Iterator[list[str]]:
    """Records every ``ImageFile.load`` (the step that allocates and decodes pixels)."""
    seen: list[str] = []
    original = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        seen.append(str(self.format))
        return original(self)

    ImageFile.ImageFile.load = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        ImageFile.ImageFile.load = original  # type: ignore[method-assign]


def refuse(data: bytes, limits: media.MediaLimits) -> str:
    started = time.perf_counter()
    with pytest.raises(InvalidInput) as refused:
        media.decode(data, media.sniff(data, "", limits), limits)
    assert time.perf_counter() - started < 1.0
    message = str(refused.value)
    assert "Traceback" not in message and "object at" not in message
    return message


@pytest.mark.parametrize("kind", list(BOMBS))
@pytest.mark.parametrize(
    ("size", "limits"),
    [
        ((16000, 16000), LIMITS),  # 2.56e8 pixels: past Pillow's hard limit too
        ((2000, 1000), LIMITS),  # over the per-call limit, far under Pillow's
        ((10000, 10000), GENEROUS),  # 1e8: Pillow only warns; the warning is an error here
    ],
    ids=["huge", "over-limit", "pillow-warning"],
)
def test_bombs_are_refused_from_the_header(
    kind: str, size: tuple[int, int], limits: media.MediaLimits, loads: list[str]
) -> None:
    data = BOMBS[kind](*size)
    assert len(data) < 1024  # a tiny file claiming a huge image
    if size != (16000, 16000):  # past Pillow's hard limit even opening raises
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            assert Image.open(io.BytesIO(data)).size == size  # the patched claim is what is read
    assert "pixels" in refuse(data, limits)
    assert loads == []  # refused before any pixel buffer was made


def test_unpatched_files_decode(loads: list[str]) -> None:
    """The bomb builders start from valid files: unpatched, each decodes (so load is reached)."""
    for kind, build in BOMBS.items():
        data = build(8, 8)
        out = media.decode(data, media.sniff(data, "", LIMITS), LIMITS)
        assert out.size == (8, 8) and out.mode == "RGB", kind
    assert set(loads) == {"GIF", "JPEG", "WEBP"}  # the spy sees real decodes


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    sys.path[:0] = [".", "protos"]
    from tests.unit.vision_service.test_bombs import BOMBS
    from tandem.errors import InvalidInput
    from vision_service import media
    from vision_service.config import VisionConfig

    config = VisionConfig(model="unused")
    limits = media.MediaLimits(
        config.max_image_bytes, config.max_image_pixels, config.max_aspect_ratio
    )
    bombs = [build(*size) for build in BOMBS.values() for size in ((16000, 16000), (8000, 6000))]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused = 0
    for data in bombs:
        try:
            media.decode(data, media.sniff(data, "", limits), limits)
        except InvalidInput:
            refused += 1
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"refused": refused, "total": len(bombs), "grew_kib": after - before}))
    """
)


def test_refusing_bombs_keeps_peak_memory_flat() -> None:
    """With the service's default limits, refusing every bomb grows peak RSS by < 100 MB.

    Run in a fresh interpreter so that the high-water mark is not one left by other tests; an
    8000x6000 claim (over the 16.8 M default, under Pillow's guard) would need 144 MB as RGB.
    """
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["refused"] == report["total"] == 2 * len(BOMBS)
    assert report["grew_kib"] < 100 * 1024


# --- polyglots (TESTPLAN 18) -----------------------------------------------------------------


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("payload.html", "<script>alert(1)</script>")
    return buf.getvalue()


HTML = b"<html><script>alert(document.cookie)</script></html>"
PHP = b"<?php system($_GET['c']); ?>"
PNG = encoded(SMALL, "PNG")
JPEG = encoded(SMALL, "JPEG", quality=95)
GIF = encoded(SMALL, "GIF")
WEBP = encoded(SMALL, "WEBP", lossless=True)

# A valid image with something else appended: decoded as that image, by its own plugin.
ACCEPTED = {
    "gif+zip": (GIF + zip_bytes(), "GIF"),
    "gif+html": (GIF + HTML, "GIF"),
    "png+trailing-html": (PNG + HTML, "PNG"),
    "png+zip": (PNG + zip_bytes(), "PNG"),
    "jpeg+php": (JPEG + PHP, "JPEG"),
    "webp+riff-trailer": (WEBP + zip_bytes(), "WEBP"),
}

# Something that is not (only) the image its leading bytes suggest: refused, never decoded by
# whichever plugin would have liked the rest of the file.
REFUSED = {
    "zip+png": zip_bytes() + PNG,
    "html+gif": HTML + GIF,
    "php+jpeg": PHP + JPEG,
    "gif-magic+png-body": b"GIF89a" + PNG,
    "png-magic+gif-body": b"\x89PNG\r\n\x1a\n" + GIF,
    "jpeg-magic+png-body": b"\xff\xd8\xff" + PNG,
    "tiff+png": b"II*\x00\x08\x00\x00\x00" + PNG,
    "ico+png": b"\x00\x00\x01\x00\x01\x00\x08\x08\x00\x00\x01\x00\x20\x00" + PNG,
    "bmp-magic-bad-header+png": b"BM" + b"\x00" * 12 + b"\x07\x00\x00\x00" + PNG,
}


@pytest.fixture
def opened() -> Iterator[list[tuple[tuple[str, ...], str]]]:
    """Records the ``formats`` each ``Image.open`` in media was allowed and the plugin it got."""
    seen: list[tuple[tuple[str, ...], str]] = []
    original = media.Image.open

    def spy(fp, mode="r", formats=None):  # type: ignore[no-untyped-def]
        image = original(fp, mode, formats)
        seen.append((tuple(formats or ()), str(image.format)))
        return image

    media.Image.open = spy  # type: ignore[assignment]
    try:
        yield seen
    finally:
        media.Image.open = original  # type: ignore[assignment]


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_polyglot_is_decoded_as_the_image_its_magic_names(
    name: str, opened: list[tuple[tuple[str, ...], str]]
) -> None:
    data, fmt = ACCEPTED[name]
    assert media.sniff(data, "", LIMITS) == fmt
    out = media.decode(data, fmt, LIMITS)
    assert (out.mode, out.size) == ("RGB", (8, 8))
    red, green, _ = out.getpixel((4, 4))
    assert green > 150 and red < 60  # the image's own pixels, not the appended payload
    assert opened == [((fmt,), fmt)]  # one open, restricted to and served by that plugin
    assert media.sniff(data, media.FORMATS[fmt][0], LIMITS) == fmt
    for declared in ("text/html", "application/zip", "image/bmp"):
        with pytest.raises(InvalidInput):
            media.sniff(data, declared, LIMITS)


@pytest.mark.parametrize("name", list(REFUSED))
def test_polyglot_that_is_not_its_claimed_image_is_refused(
    name: str, opened: list[tuple[tuple[str, ...], str]]
) -> None:
    data = REFUSED[name]
    with pytest.raises(InvalidInput) as refused:
        media.decode(data, media.sniff(data, "", LIMITS), LIMITS)
    assert "Traceback" not in str(refused.value)
    allowed = set(media.FORMATS)
    assert all(set(formats) <= allowed and plugin in allowed for formats, plugin in opened)


def test_a_jpeg_that_pillow_would_read_as_mpo_is_only_its_first_picture(
    opened: list[tuple[tuple[str, ...], str]],
) -> None:
    """A multi-picture JPEG (MPO) is still a JPEG by its magic; its first picture is decoded."""
    second = Image.new("RGB", (8, 8), (250, 0, 0))
    data = encoded(SMALL, "MPO", save_all=True, append_images=[second])
    out = media.decode(data, media.sniff(data, "image/jpeg", LIMITS), LIMITS)
    assert out.size == (8, 8) and out.getpixel((4, 4))[1] > 150
    assert [formats for formats, _ in opened] == [("JPEG",)]
    assert opened[0][1] in ("JPEG", "MPO")  # Pillow's JPEG plugin hands MPO files to its subclass
