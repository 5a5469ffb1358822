"""Synthetic pictures of flat coloured shapes, drawn with PIL, and per-patch labels for them.

A scene is one to four shapes, each of a different type and colour, in distinct quadrants (so
"top left" is exact), on a varied background: light, dark or mid grey with a slight tint,
sometimes a gradient between two of those, sometimes noise. Each quadrant is one vision patch
of the default model, so every shape is one image token, which the tiny model can look up by
shape as easily as by colour (a shape straddling patches it could only find by colour). Shapes
vary in size (about half to nine tenths of the quadrant) and in place inside it; they are
drawn at twice the size and downsampled, which anti-aliases the edges, and their colours get a
small random jitter.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
GRID = 2  # quadrants per side; the default model's vision patches are these cells
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 75, 225),
    "yellow": (240, 210, 30),
    "purple": (145, 50, 185),
    "orange": (250, 135, 20),
}
CELLS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
IGNORE_LABEL = -100

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Item:
    """One shape: type, colour name, quadrant index (row-major) and its box in pixels."""

    shape: str
    colour: str
    cell: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Background:
    """A fill from ``start`` to ``end`` (top-down when ``vertical``), plus Gaussian ``noise``."""

    start: RGB
    end: RGB
    vertical: bool
    noise: float


@dataclass(frozen=True)
class Scene:
    """A picture to draw: its shapes in quadrant order, and the background."""

    items: tuple[Item, ...]
    background: Background

    def has(self, shape: str, colour: str) -> bool:
        return any(i.shape == shape and i.colour == colour for i in self.items)


def random_scene(rng: random.Random) -> Scene:
    """One to four shapes with distinct types and colours, one per quadrant, on a random background."""
    n = rng.randint(1, 4)
    shapes = rng.sample(SHAPES, n)
    colours = rng.sample(list(COLOURS), n)
    cells = sorted(rng.sample(range(GRID * GRID), n))
    side = IMAGE_SIZE // GRID
    items = []
    for shape, colour, cell in zip(shapes, colours, cells, strict=True):
        size = rng.uniform(0.5, 0.9) * side
        slack = (side - size) / 2
        cx = (cell % GRID) * side + side / 2 + rng.uniform(-slack, slack)
        cy = (cell // GRID) * side + side / 2 + rng.uniform(-slack, slack)
        items.append(_item(shape, colour, cell, cx, cy, size))
    return Scene(tuple(items), _background(rng))


def _item(shape: str, colour: str, cell: int, cx: float, cy: float, size: float) -> Item:
    r = size / 2
    return Item(shape, colour, cell, (cx - r, cy - r, cx + r, cy + r))


def _background(rng: random.Random) -> Background:
    def tint() -> RGB:
        level = rng.choice((rng.randint(185, 250), rng.randint(15, 75), rng.randint(90, 160)))
        spread = rng.randint(0, 22)
        red, green, blue = (max(0, min(255, level + rng.randint(-spread, spread))) for _ in range(3))
        return red, green, blue

    start = tint()
    end = tint() if rng.random() < 0.4 else start
    return Background(start, end, rng.random() < 0.5, rng.choice((0.0, 0.0, 4.0, 9.0)))


def render(scene: Scene, seed: int) -> Image.Image:
    """Draw ``scene`` as an RGB image; ``seed`` fixes the noise and the colour jitter."""
    rng = np.random.default_rng(seed)
    scale = 2
    image = _fill(scene.background, IMAGE_SIZE * scale)
    draw = ImageDraw.Draw(image)
    for item in scene.items:
        fill = np.clip(np.array(COLOURS[item.colour]) + rng.integers(-18, 19, size=3), 0, 255)
        box = (item.box[0] * scale, item.box[1] * scale, item.box[2] * scale, item.box[3] * scale)
        _draw_shape(draw, item.shape, box, tuple(int(c) for c in fill))
    image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    if scene.background.noise:
        noise = rng.normal(0, scene.background.noise, (IMAGE_SIZE, IMAGE_SIZE, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))
    return image


def _fill(background: Background, size: int) -> Image.Image:
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    ramp = ramp[:, None, None] if background.vertical else ramp[None, :, None]
    pixels = np.array(background.start, np.float32) * (1 - ramp) + np.array(background.end, np.float32) * ramp
    return Image.fromarray(np.broadcast_to(pixels, (size, size, 3)).clip(0, 255).astype(np.uint8))


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill: tuple[int, ...]
) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1 - r * 0.15), (x0, y1 - r * 0.15)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:  # star
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)


def patch_labels(scene: Scene, grid: int, sure: float = 0.1) -> tuple[list[int], list[int]]:
    """What each patch shows (row-major ``grid`` x ``grid``): training targets for the vision side.

    Per patch, 1 + the index in ``SHAPES`` and in ``COLOURS`` of the item covering most of it
    when that covers at least ``sure`` of the patch; 0 (background) when items cover at most 2%;
    ``IGNORE_LABEL`` for a sliver in between.
    """
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    for index, item in enumerate(scene.items):
        _draw_shape(draw, item.shape, item.box, (index + 1,))
    side = IMAGE_SIZE // grid
    cells = np.asarray(mask).reshape(grid, side, grid, side).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    shapes, colours = [], []
    for cell in cells:
        cover = np.bincount(cell, minlength=len(scene.items) + 1)[1:] / cell.size
        item = scene.items[int(cover.argmax())]
        if cover.max() >= sure:
            shapes.append(SHAPES.index(item.shape) + 1)
            colours.append(list(COLOURS).index(item.colour) + 1)
        else:
            label = 0 if cover.sum() <= 0.02 else IGNORE_LABEL
            shapes.append(label)
            colours.append(label)
    return shapes, colours


def main(argv: list[str] | None = None) -> None:
    """``python -m recipes.default_model.scenes OUT.png [--seed N] [--size PX]``: save a random scene."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Save a random scene of the default model's kind as an image."
    )
    parser.add_argument("out", help="image file to write (PNG, JPEG, ...)")
    parser.add_argument("--seed", type=int, default=0, help="picks the scene (default: %(default)s)")
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, help="output width and height in pixels")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    image = render(random_scene(rng), rng.getrandbits(32))
    image.resize((args.size, args.size), Image.Resampling.NEAREST).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
