"""High-bit-depth images are converted to 8 bits within bounded memory; the pixel limit is sane.

Issue 11, finding 8: two 75 KB 16-bit PNGs added ~2 GB to the vision service, because the
conversion made float64 copies of the whole image (8 bytes per pixel, several times), and the
40 Mpx default let them be huge. Memory is measured with tracemalloc (numpy reports its buffers
to it), not with wall time.
"""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from vision_service import media
from vision_service.config import VisionConfig

DEFAULT_PIXELS = int(VisionConfig.__dataclass_fields__["max_image_pixels"].default)  # type: ignore[arg-type]
LIMITS = media.MediaLimits(max_bytes=20 << 20, max_pixels=DEFAULT_PIXELS, max_aspect_ratio=100.0)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _sixteen_bit(width: int, height: int, seed: int) -> bytes:
    """A 16-bit greyscale PNG of a horizontal gradient: megapixels in a few hundred KB."""
    row = (np.linspace(0, 65535 - seed, width) + seed).astype(np.uint16)
    return _png(Image.fromarray(np.broadcast_to(row, (height, width)).copy()))


def test_the_default_pixel_limit_suits_vision_language_models() -> None:
    assert DEFAULT_PIXELS <= 4096 * 4096
    help_text = VisionConfig.__dataclass_fields__["max_image_pixels"].metadata["help"]
    assert "Qwen2-VL" in help_text and "bytes per pixel" in help_text


def test_two_large_sixteen_bit_pngs_decode_in_bounded_memory() -> None:
    side = int(DEFAULT_PIXELS**0.5)  # the largest square the default limit accepts
    files = [_sixteen_bit(side, side, seed) for seed in (1, 2)]
    assert all(len(data) < 2 << 20 for data in files)  # small files, big images
    tracemalloc.start()
    try:
        decoded = [media.decode(data, "PNG", LIMITS) for data in files]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(image.size == (side, side) and image.mode == "RGB" for image in decoded)
    # the 8-bit result (1 byte a pixel) plus one band; float64 copies were 8 bytes a pixel each
    assert peak < 1.5 * side * side, f"peak {peak / 2**20:.0f} MiB for {side}x{side}"


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_banded_conversion_equals_the_whole_image_formula(mode: str) -> None:
    width, height = 1000, 700  # several bands of rows
    rng = np.random.default_rng(0)
    if mode == "I;16":
        values = rng.integers(0, 65536, size=(height, width), dtype=np.uint16)
    elif mode == "I":
        values = rng.integers(-70_000, 140_000, size=(height, width), dtype=np.int32)
    else:
        values = rng.uniform(-20.0, 300.0, size=(height, width)).astype(np.float32)
    image = Image.fromarray(values)
    assert image.mode == mode
    scale = 1.0 if mode == "F" else 257.0
    expected = np.clip(np.rint(values.astype(np.float64) / scale), 0, 255).astype(np.uint8)
    got = np.asarray(media.to_rgb(image))
    assert got.shape == (height, width, 3)
    assert np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 2], expected)
