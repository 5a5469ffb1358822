"""Hand-placed pictures for the default model's tests, drawn like its training scenes."""

from __future__ import annotations

from PIL import Image

from recipes.default_model.scenes import GRID, IMAGE_SIZE, Background, Item, Scene, render

GREY = Background((200, 200, 200), (200, 200, 200), vertical=False, noise=0.0)


def picture(*items: tuple[str, str, int]) -> Image.Image:
    """A plain grey picture of (shape, colour, quadrant) items; quadrants are row-major 0..3.

    Each item fills most of its quadrant (one vision patch), as in the training scenes.
    """
    side = IMAGE_SIZE // GRID
    shapes = []
    for shape, colour, cell in items:
        x, y = (cell % GRID) * side + side / 2, (cell // GRID) * side + side / 2
        shapes.append(Item(shape, colour, cell, (x - 11.0, y - 11.0, x + 11.0, y + 11.0)))
    return render(Scene(tuple(shapes), GREY), seed=0)
