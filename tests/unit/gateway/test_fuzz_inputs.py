"""Fuzzing the parsers that take client bytes and strings (TESTPLAN 21).

hypothesis drives (a) the vision image path (``media.sniff`` then ``media.decode``) with random
bytes and with bit flips, truncations and splices of valid PNG/JPEG/GIF/WebP/BMP files, and
(b) the gateway's ``data:`` URI parser and ``MediaGuard.resolve`` over arbitrary image_url
strings, schemes and odd base64. The only exception allowed out is the documented
``InvalidInput``, and each example must finish within the ``deadline``.

URL examples never leave this machine: every host name resolves (through the fetcher's
``lookup`` seam) to a public documentation address, and the ``dial`` hook sends every vetted
address to a closed local port, so a URL the guard lets through fails to connect.
Crashes that fuzzing has found are pinned in the ``REGRESSIONS`` lists.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.datauri import DataUri, parse_data_uri
from gateway.deadline import Deadline
from gateway.fetch import FetchPolicy, UrlFetcher
from gateway.media_guard import MediaGuard, MediaLimits
from gateway.messages import ImageInput, ImageSource
from tandem.errors import InvalidInput
from vision_service import media

FUZZ = settings(
    max_examples=150,
    deadline=1000,  # ms per example; the CPU is shared, so not tighter
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=False,
)
LIMITS = media.MediaLimits(max_bytes=1 << 20, max_pixels=250_000, max_aspect_ratio=100.0)


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _seeds() -> list[bytes]:
    rgb = Image.new("RGB", (24, 16), (30, 120, 220))
    rgb.paste((250, 10, 10), (0, 0, 12, 8))
    rgba = rgb.convert("RGBA")
    rgba.putpixel((1, 1), (0, 0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [rgb, Image.new("RGB", (24, 16), (0, 255, 0))]
    return [
        encoded(rgb, "PNG"),
        encoded(rgba, "PNG"),
        encoded(rgb.convert("P"), "PNG", transparency=0),
        encoded(rgb, "JPEG", quality=80),
        encoded(rgb, "JPEG", exif=exif, progressive=True),
        encoded(rgb.convert("CMYK"), "JPEG"),
        encoded(rgb, "GIF"),
        encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], transparency=0),
        encoded(rgb, "WEBP", quality=60),
        encoded(rgba, "WEBP", lossless=True),
        encoded(rgb, "BMP"),
        encoded(rgb.convert("L"), "BMP"),
    ]


SEEDS = _seeds()


def decode_or_refuse(data: bytes) -> None:
    """The property: a decoded RGB image within the limits, or InvalidInput; nothing else."""
    try:
        image = media.decode(data, media.sniff(data, "", LIMITS), LIMITS)
    except InvalidInput as refused:
        assert "Traceback" not in str(refused)
        return
    assert image.mode == "RGB"
    assert 1 <= image.width * image.height <= LIMITS.max_pixels


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid seed image with bit flips, byte overwrites, a truncation and/or a splice."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[at] ^= 1 << draw(st.integers(0, 7))
        else:
            data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        other = draw(st.sampled_from(SEEDS))
        cut, start = draw(st.integers(1, len(data))), draw(st.integers(0, len(other)))
        data = data[:cut] + other[start:]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


# Regression corpus: hand-picked edge cases; append any input that fuzzing ever crashes on.
# (Runs of 3000 examples per strategy found none so far.)
IMAGE_REGRESSIONS: list[bytes] = [
    *(seed[:cut] for seed in SEEDS for cut in (8, 16, 33, 64)),  # cut inside the header
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\xff" * 13,  # IHDR with absurd fields
    b"GIF89a\x00\x00\x00\x00\x00\x00\x00",  # 0x0 screen
]


@FUZZ
@given(st.binary(max_size=512))
@example(b"")
@example(b"\x89PNG\r\n\x1a\n")
@example(b"\xff\xd8\xff")
@example(b"GIF89a")
@example(b"RIFF\x00\x00\x00\x00WEBP")
@example(b"BM" + b"\x00" * 12 + b"\x28\x00\x00\x00")
def test_fuzz_random_bytes_only_raise_invalid_input(data: bytes) -> None:
    decode_or_refuse(data)


@FUZZ
@given(
    st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM"]), st.binary(max_size=256)
)
def test_fuzz_random_bytes_behind_valid_magic_only_raise_invalid_input(magic: bytes, rest: bytes) -> None:
    decode_or_refuse(magic + rest)


@FUZZ
@given(mutated_images())
def test_fuzz_mutated_images_only_raise_invalid_input(data: bytes) -> None:
    decode_or_refuse(data)


def test_every_seed_decodes_unmutated() -> None:
    """The seeds are valid: the mutation fuzzer starts from images that decode."""
    for data in SEEDS:
        image = media.decode(data, media.sniff(data, "", LIMITS), LIMITS)
        assert image.mode == "RGB" and image.size in ((24, 16), (16, 24))


@pytest.mark.parametrize("data", IMAGE_REGRESSIONS)
def test_image_regressions(data: bytes) -> None:
    decode_or_refuse(data)


# --- gateway: data: URIs and image_url sources -----------------------------------------------

MAX_BYTES = 4096
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
ODD_CHARS = B64_ALPHABET + "-_ \t\r\n%.,;:\x00é\u200b"

media_types = st.one_of(
    st.sampled_from(["image/png", "IMAGE/JPEG", "image/webp", "text/html", "image", "image/", ""]),
    st.text(max_size=40),
)
params = st.lists(
    st.one_of(
        st.sampled_from(["base64", "BASE64", "charset=utf-8", "name=a,b", " base64 "]), st.text(max_size=12)
    ),
    max_size=4,
)
payloads = st.one_of(
    st.binary(max_size=512).map(lambda b: base64.b64encode(b).decode()),
    st.text(alphabet=B64_ALPHABET, max_size=600),
    st.text(alphabet=ODD_CHARS, max_size=200),
    st.text(max_size=100),
    st.integers(0, 4).map(lambda n: "=" * n),
)


@st.composite
def data_uris(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["data:", "DATA:", "Data:", "data:,", "data:;", ""]))
    header = ";".join([draw(media_types), *draw(params)])
    sep = draw(st.sampled_from([",", ",", "", ",,"]))
    return prefix + header + sep + draw(payloads)


def check_data_uri(url: str) -> None:
    try:
        uri = parse_data_uri(url, MAX_BYTES)
    except InvalidInput:
        return
    assert isinstance(uri, DataUri)
    assert uri.media_type.startswith("image/") and 0 < len(uri.data) <= MAX_BYTES


# Regression corpus (hand-picked; append any crash fuzzing finds).
DATA_URI_REGRESSIONS: list[str] = ["data:image/png;base64,====", "data:image/png;base64,A"]


@FUZZ
@given(st.one_of(data_uris(), st.text(max_size=300).map(lambda s: "data:" + s)))
@example("data:image/png;base64," + "A" * (4 * MAX_BYTES // 3 + 8))  # just over the cap
@example("data:image/png;base64," + "QUFB" * (MAX_BYTES // 3))  # exactly at the cap
@example("data:image/png;base64,\u0660\u0661")  # non-ASCII digits
def test_fuzz_data_uris_only_raise_invalid_input(url: str) -> None:
    check_data_uri(url)


@pytest.mark.parametrize("url", DATA_URI_REGRESSIONS)
def test_data_uri_regressions(url: str) -> None:
    check_data_uri(url)


def test_huge_data_uri_is_refused_from_its_length() -> None:
    huge = "data:image/png;base64," + "A" * (8 * 1024 * 1024)
    with pytest.raises(InvalidInput, match="too large"):
        parse_data_uri(huge, MAX_BYTES)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


CLOSED = closed_port()


async def public_lookup(host: str, port: int) -> list[str]:
    return ["192.0.2.10"] if host.endswith(".test") else ["93.184.216.34"]


def dial_nowhere(ip: str, port: int) -> tuple[str, int]:
    return "127.0.0.1", CLOSED


hosts = st.one_of(
    st.sampled_from(
        [
            "example.com",
            "img.test",
            "127.0.0.1",
            "[::1]",
            "0x7f.1",
            "2130706433",
            "93.184.216.34",
            "[2606:4700::1]",
            "localhost",
            "",
            "a" * 300,
            "xn--nxasmq6b.com",
        ]
    ),
    st.text(max_size=30),
)
schemes = st.sampled_from(
    ["http", "https", "HTTP", "ftp", "file", "gopher", "javascript", "data", "", "h\ttp"]
)
image_urls = st.one_of(
    st.builds(
        lambda scheme, sep, userinfo, host, port, path: f"{scheme}{sep}{userinfo}{host}{port}{path}",
        schemes,
        st.sampled_from(["://", ":", ":/", ":///", "//"]),
        st.sampled_from(["", "", "u:p@", "@", "user@"]),
        hosts,
        st.sampled_from(["", ":80", ":0", ":99999", ":-1", ":abc"]),
        st.text(max_size=30),
    ),
    data_uris(),
    st.text(max_size=200),
)
sources = st.one_of(
    st.builds(ImageSource, url=image_urls),
    st.builds(ImageSource, image_id=st.text(alphabet="0123456789abcdefABCDEF-", max_size=70)),
    st.builds(ImageSource, data=st.binary(max_size=64), media_type=media_types),
)


async def resolve(batch: list[ImageSource]) -> list[ImageInput]:
    fetcher = UrlFetcher(
        FetchPolicy(timeout_seconds=2.0, connect_timeout_seconds=1.0), public_lookup, dial_nowhere
    )
    guard = MediaGuard(
        MediaLimits(max_images=4, max_image_bytes=MAX_BYTES, max_request_bytes=3 * MAX_BYTES), fetcher
    )
    try:
        return await guard.resolve(batch, Deadline.after(5.0))
    finally:
        await fetcher.close()


def check_sources(batch: list[ImageSource]) -> None:
    try:
        inputs = asyncio.run(resolve(batch))
    except InvalidInput as refused:
        assert "127.0.0.1" not in str(refused) and "Traceback" not in str(refused)
        return
    assert len(inputs) == len(batch)
    assert all(bool(i.data) != bool(i.image_id) for i in inputs)


# Regression corpus (hand-picked; append any crash fuzzing finds).
SOURCE_REGRESSIONS: list[str] = [
    "http://[::1",
    "http://%zz/",
    "http://a..b/",
    "https://:80/",
    "http://93.184.216.34:99999/",
    "http://\u0660\u0661\u0662.com/",
    "data:image/png;base64," + "A" * (4 * MAX_BYTES),
]


@FUZZ
@given(st.lists(sources, min_size=1, max_size=5))
def test_fuzz_image_sources_only_raise_invalid_input(batch: list[ImageSource]) -> None:
    check_sources(batch)


@pytest.mark.parametrize("url", SOURCE_REGRESSIONS)
def test_image_url_regressions(url: str) -> None:
    check_sources([ImageSource(url=url)])


def test_a_url_the_guard_lets_through_never_leaves_the_machine() -> None:
    """The hermetic set-up works: a public URL is vetted, then dialled to a closed local port."""
    with pytest.raises(InvalidInput, match="could not fetch the image URL"):
        asyncio.run(resolve([ImageSource(url="https://example.com/cat.png")]))
