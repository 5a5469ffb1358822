"""Image normalisation and refusal, below the service: vision_service.media."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from tandem.errors import InvalidInput
from tests.support.png_bomb import png_claiming
from vision_service import media

LIMITS = media.MediaLimits(max_bytes=1 << 20, max_pixels=1_000_000, max_aspect_ratio=100.0)


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def load(data: bytes, limits: media.MediaLimits = LIMITS, media_type: str = "") -> Image.Image:
    return media.decode(data, media.sniff(data, media_type, limits), limits)


def test_formats_on_the_allow_list_decode_to_rgb() -> None:
    image = Image.new("RGB", (16, 12), (200, 10, 10))
    for fmt in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
        out = load(encoded(image, fmt))
        assert (out.mode, out.size) == ("RGB", (16, 12)), fmt
        assert out.getpixel((8, 6))[0] > 150, fmt


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    out = load(encoded(image, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = load(encoded(rgba, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((3, 3)) == (255, 255, 255)

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    out = load(encoded(palette, "PNG", transparency=1))
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((2, 2)) == (255, 255, 255)

    la = Image.new("LA", (2, 2), (0, 0))
    assert load(encoded(la, "PNG")).getpixel((1, 1)) == (255, 255, 255)


def test_other_modes_become_rgb() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    red = load(encoded(cmyk, "JPEG", quality=95)).getpixel((4, 4))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    sixteen = Image.new("I;16", (4, 4), 65535)
    sixteen.putpixel((0, 0), 32896)
    out = load(encoded(sixteen, "PNG"))
    assert out.getpixel((3, 3)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (128, 128, 128)  # scaled down, not clipped

    bilevel = Image.new("1", (3, 3), 1)
    assert load(encoded(bilevel, "PNG")).getpixel((1, 1)) == (255, 255, 255)
    assert load(encoded(Image.new("L", (1, 1), 7), "PNG")).getpixel((0, 0)) == (7, 7, 7)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (6, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = load(data)
    assert out.mode == "RGB" and out.getpixel((3, 3))[0] > 200


@pytest.mark.parametrize(
    ("data", "media_type", "says"),
    [
        (b"", "", "empty"),
        (b"hello, world" * 10, "", "unsupported"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "image/svg+xml", "unsupported"),
        (encoded(Image.new("RGB", (4, 4)), "TIFF"), "", "unsupported"),
        (encoded(Image.new("RGB", (4, 4)), "PNG"), "image/jpeg", "does not match"),
        (encoded(Image.new("RGB", (4, 4)), "PNG"), "image/tiff", "unsupported media type"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (2 << 20), "", "limit is"),
    ],
    ids=["empty", "garbage", "svg", "tiff", "mismatch", "unknown-type", "too-many-bytes"],
)
def test_refused_before_decoding(data: bytes, media_type: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        media.sniff(data, media_type, LIMITS)


def test_media_type_parameters_and_case_are_accepted() -> None:
    data = encoded(Image.new("RGB", (4, 4)), "JPEG")
    assert media.sniff(data, "Image/JPEG; q=1", LIMITS) == "JPEG"


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:60], "corrupt or truncated"),
        (png_claiming(100_000, 100_000), "pixels"),
        (png_claiming(2000, 1000), "pixels"),  # over the per-call limit, under Pillow's
        (png_claiming(1, 10_000), "aspect ratio"),
        (png_claiming(0, 10), "corrupt|no pixels"),
    ],
    ids=["truncated", "bomb", "over-limit", "1x10000", "0x10"],
)
def test_refused_from_the_header(data: bytes, says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as info:
        load(data)
    assert "Traceback" not in str(info.value) and not re.search(r"0x[0-9a-f]{6,}", str(info.value))


def test_pillow_bomb_warning_is_an_error_even_with_a_high_limit() -> None:
    generous = media.MediaLimits(max_bytes=1 << 20, max_pixels=10**12, max_aspect_ratio=100.0)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(InvalidInput, match="too many pixels"):
        load(png_claiming(10_000, 10_000), generous)  # 1e8 > Pillow's warning threshold
    assert before == Image.MAX_IMAGE_PIXELS


def test_extreme_but_allowed_shapes_decode() -> None:
    assert load(encoded(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")).size == (1, 1)
    assert load(encoded(Image.new("RGB", (100, 1)), "PNG")).size == (100, 1)
