"""Seeded synthetic workloads: conversations of one or more turns, with or without images.

``random``: text-only prompts of about ``prompt_len`` tokens (synthetic English words; the server's
own count is in each response's usage) and ``output_len`` tokens to generate. Both lengths are
drawn uniformly from ``[len * (1 - range_ratio), len * (1 + range_ratio)]``.

``random-mm``: the same, plus ``images_per_request`` images in the first turn of each
conversation. Images come from a pool of ``pool_size`` distinct images; ``reuse`` is the fraction
of image slots that show an image an earlier slot (in dataset order) already showed, drawn
uniformly from the pool images sent so far; the other slots show an image never sent before (the
next pool image, or once the pool is used up, one of its own). The first slot is always new, so
the realised ratio is ``min(round(reuse * slots), slots - 1) / slots``. Each image's size is drawn
from ``image_sizes``; its pixels are seeded noise, encoded once as a base64 ``data:`` URL.

Turns after the first are text-only. The same config and seed give the same workload, byte for
byte; warm-up conversations come from another stream of the same seed, with images of their own.
"""

from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass, field
from typing import Literal

DatasetName = Literal["random", "random-mm"]
ImageFormat = Literal["jpeg", "png"]
DATASETS: tuple[DatasetName, ...] = ("random", "random-mm")

_WORD_TEXT = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government "
    "number night point home water room mother area money story fact month lot right study book "
    "eye job word business issue side kind head house service friend father power hour game line "
    "end member law car city community name president team minute idea kid body information back "
    "parent face others level office door health person art war history party result change "
    "morning reason research girl guy moment air teacher force education red green blue small "
    "large bright quiet happy early late simple clear open ready strong light dark warm cold"
)
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class DatasetConfig:
    """What to generate (see the module docstring)."""

    name: DatasetName = "random"
    num_conversations: int = 100
    turns: int = 1
    prompt_len: int = 32
    output_len: int = 64
    range_ratio: float = 0.0
    image_sizes: tuple[tuple[int, int], ...] = ((224, 224),)
    images_per_request: int = 1
    pool_size: int = 100
    reuse: float = 0.0
    image_format: ImageFormat = "jpeg"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"{self.name=} must be one of {DATASETS}")
        for name in ("num_conversations", "turns", "prompt_len", "output_len", "pool_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.range_ratio < 1:
            raise ValueError(f"{self.range_ratio=} must be in [0, 1)")
        if not 0 <= self.reuse <= 1:
            raise ValueError(f"{self.reuse=} must be in [0, 1]")
        if self.images_per_request < 0 or not self.image_sizes:
            raise ValueError(f"{self.images_per_request=} must be >= 0, with at least one image size")
        if any(w < 1 or h < 1 for w, h in self.image_sizes):
            raise ValueError(f"{self.image_sizes=}: every size must be at least 1x1")

    @property
    def has_images(self) -> bool:
        return self.name == "random-mm" and self.images_per_request > 0


@dataclass(frozen=True)
class BenchImage:
    """One image as sent: ``key`` names it (same key = same bytes), ``reused`` when an earlier
    slot sent it already."""

    key: str
    size: tuple[int, int]
    data_url: str = field(repr=False)
    reused: bool = False


@dataclass(frozen=True)
class Turn:
    """One user turn: its text, its images (first turn only) and how many tokens to ask for."""

    text: str = field(repr=False)
    output_len: int
    images: tuple[BenchImage, ...] = ()


@dataclass(frozen=True)
class Conversation:
    """One conversation of the workload: its turns run one after another."""

    index: int
    turns: tuple[Turn, ...]


def parse_size(text: str) -> tuple[int, int]:
    """``"224x224"`` -> ``(224, 224)`` (width x height)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"bad image size {text!r}: expected WIDTHxHEIGHT, e.g. 224x224")
    return int(width), int(height)


def build_dataset(config: DatasetConfig, *, warmup: int = 0) -> tuple[list[Conversation], list[Conversation]]:
    """The measured conversations, and ``warmup`` warm-up conversations (no image reuse, images
    of their own, prompts from another random stream)."""
    measured = _Builder(config, stream=0).conversations(config.num_conversations, config.reuse)
    warm = _Builder(config, stream=1).conversations(warmup, 0.0) if warmup else []
    return measured, warm


class _Builder:
    """Draws conversations for one random stream of the seed (0: measured, 1: warm-up)."""

    def __init__(self, config: DatasetConfig, stream: int):
        self.config = config
        self.stream = stream
        self.rng = random.Random(f"tandem-bench:{config.seed}:{stream}")
        self._pool: dict[int, BenchImage] = {}

    def conversations(self, count: int, reuse: float) -> list[Conversation]:
        per_conversation = self.config.images_per_request if self.config.has_images else 0
        images = self._images(count * per_conversation, reuse)
        return [
            Conversation(i, self._turns(images[i * per_conversation : (i + 1) * per_conversation]))
            for i in range(count)
        ]

    def _turns(self, images: list[BenchImage]) -> tuple[Turn, ...]:
        return tuple(
            Turn(self._prompt(), self._length(self.config.output_len), tuple(images) if turn == 0 else ())
            for turn in range(self.config.turns)
        )

    def _length(self, mean: int) -> int:
        spread = self.config.range_ratio
        return max(1, self.rng.randint(round(mean * (1 - spread)), round(mean * (1 + spread))))

    def _prompt(self) -> str:
        words = self.rng.choices(WORDS, k=self._length(self.config.prompt_len))
        return " ".join(words).capitalize() + "."

    def _images(self, slots: int, reuse: float) -> list[BenchImage]:
        count = min(round(reuse * slots), slots - 1) if slots else 0
        reused = set(self.rng.sample(range(1, slots), count))
        sent: list[int] = []
        out: list[BenchImage] = []
        fresh = 0
        for slot in range(slots):
            if slot in reused:
                image = self._pool[self.rng.choice(sent)]
                out.append(BenchImage(image.key, image.size, image.data_url, reused=True))
                continue
            out.append(self._image(fresh))
            if fresh < self.config.pool_size:
                sent.append(fresh)
            fresh += 1
        return out

    def _image(self, index: int) -> BenchImage:
        rng = random.Random(f"tandem-bench-image:{self.config.seed}:{self.stream}:{index}")
        size = rng.choice(self.config.image_sizes)
        image = BenchImage(f"{self.stream}-{index}", size, _data_url(rng, size, self.config.image_format))
        if index < self.config.pool_size:
            self._pool[index] = image
        return image


def _data_url(rng: random.Random, size: tuple[int, int], fmt: ImageFormat) -> str:
    from PIL import Image

    pixels = rng.randbytes(size[0] * size[1] * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", size, pixels).save(out, format=fmt.upper(), quality=90)
    return f"data:image/{fmt};base64,{base64.b64encode(out.getvalue()).decode('ascii')}"
