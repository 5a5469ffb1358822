"""The questions Tandem's default model learns to answer, about the pictures of ``scenes``.

Every sample is a Hugging Face chat (``{"role", "content": [{"type": "image"}, {"type": "text",
"text": ...}]}``) with its scenes and images in placeholder order; the last assistant message is
the answer to score, earlier ones (follow-ups) are history. Sample kinds and their answers:

* ``shape``: "What shape is this?" -> "It is a red circle."; "Which shape is red?" -> "The red
  shape is a circle."
* ``colour``: "What colour is the square?" -> "The square is blue."
* ``count``: "How many shapes are there?" -> "There are three shapes."
* ``position``: "Where is the star?" -> "The star is at the top left."
* ``describe``: "Describe the image." (or "What is in this image?", ...) -> "I see a red circle
  and a blue square."
* ``two_image``: "Which image has the red square, the first or the second?" -> "The first image."
* ``two_count``: "How many shapes are in the second image?" -> "There is one shape."
* ``followup``: a first turn with the image, then a second, text-only question about it.

Everything is drawn from a ``random.Random`` the caller seeds, so a seed fixes the data set.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from recipes.default_model.scenes import CELLS, COLOURS, SHAPES, Scene, random_scene, render

KINDS: tuple[str, ...] = (
    "shape",
    "colour",
    "count",
    "position",
    "describe",
    "two_image",
    "two_count",
    "followup",
)
SINGLE_KINDS: tuple[str, ...] = ("shape", "colour", "count", "position", "describe")
# Training chats: one or two images, then one to three questions about them (asked in turn, the
# images only in the first); the kind of each question is drawn with these weights.
SINGLE_MIX: dict[str, float] = {
    "shape": 0.26,
    "colour": 0.27,
    "position": 0.27,
    "describe": 0.1,
    "count": 0.1,
}
TWO_MIX: dict[str, float] = {"two_image": 0.7, "two_count": 0.3}
TWO_IMAGE_SHARE = 0.3
TURNS: dict[int, float] = {1: 0.4, 2: 0.35, 3: 0.25}
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
DESCRIBE: tuple[str, ...] = (
    "Describe the image.",
    "Describe this image.",
    "describe this image",
    "What is in this image?",
    "What do you see?",
)

Message = dict[str, Any]


@dataclass
class Sample:
    """A chat with its scenes and images in placeholder order; ``answer`` is the last turn.

    ``images`` is empty when the sample was made with ``draw=False``.
    """

    kind: str
    messages: list[Message]
    scenes: list[Scene]
    images: list[Image.Image] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return str(self.messages[-1]["content"][0]["text"])

    @property
    def prompt(self) -> list[Message]:
        """The conversation without the final answer, as a client sends it."""
        return self.messages[:-1]


def _user(text: str, images: int = 0) -> Message:
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


def _assistant(text: str) -> Message:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def single_question(rng: random.Random, scene: Scene, kind: str) -> tuple[str, str]:
    """A (question, answer) pair of ``kind`` (one of ``SINGLE_KINDS``) about ``scene``."""
    items = scene.items
    item = rng.choice(items)
    if kind == "shape" and len(items) == 1 and rng.random() < 0.75:
        return "What shape is this?", f"It is {_a(item.colour)} {item.shape}."
    if kind == "shape":
        return f"Which shape is {item.colour}?", f"The {item.colour} shape is a {item.shape}."
    if kind == "colour":
        word = "colour" if rng.random() < 0.7 else "color"
        return f"What {word} is the {item.shape}?", f"The {item.shape} is {item.colour}."
    if kind == "count":
        return "How many shapes are there?", _count_answer(len(items))
    if kind == "position":
        return f"Where is the {item.shape}?", f"The {item.shape} is at the {CELLS[item.cell]}."
    if kind == "describe":
        listed = [f"{_a(i.colour)} {i.shape}" for i in items]
        text = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
        return rng.choice(DESCRIBE), f"I see {text}."
    raise ValueError(f"unknown question kind {kind!r}; expected one of {SINGLE_KINDS}")


def make_sample(rng: random.Random, kind: str, draw: bool = True) -> Sample:
    """One sample of ``kind`` (see ``KINDS``), drawn from ``rng``; ``draw=False`` skips the images."""
    if kind in ("two_image", "two_count"):
        return _two_image(rng, draw, kind)
    if kind == "followup":
        return _followup(rng, draw)
    scene = random_scene(rng)
    question, answer = single_question(rng, scene, kind)
    return _sample(rng, kind, [_user(question, 1), _assistant(answer)], [scene], draw)


def _sample(
    rng: random.Random, kind: str, messages: list[Message], scenes: list[Scene], draw: bool
) -> Sample:
    seeds = [rng.getrandbits(32) for _ in scenes]
    images = [render(scene, seed) for scene, seed in zip(scenes, seeds, strict=True)] if draw else []
    return Sample(kind, messages, scenes, images)


def _two_question(rng: random.Random, scenes: list[Scene], kind: str) -> tuple[str, str]:
    if kind == "two_count":
        which = rng.randrange(2)
        question = f"How many shapes are in the {('first', 'second')[which]} image?"
        return question, _count_answer(len(scenes[which].items))
    choices = [(w, i) for w in (0, 1) for i in scenes[w].items if not scenes[1 - w].has(i.shape, i.colour)]
    which, item = rng.choice(choices)
    question = f"Which image has the {item.colour} {item.shape}, the first or the second?"
    return question, f"The {('first', 'second')[which]} image."


def _two_scenes(rng: random.Random) -> list[Scene]:
    """Two scenes that do not show the same set of (shape, colour) pairs."""
    first, second = random_scene(rng), random_scene(rng)
    while _pairs(first) == _pairs(second):
        second = random_scene(rng)
    return [first, second]


def _pairs(scene: Scene) -> set[tuple[str, str]]:
    return {(item.shape, item.colour) for item in scene.items}


def _count_answer(n: int) -> str:
    return "There is one shape." if n == 1 else f"There are {NUMBERS[n]} shapes."


def _two_image(rng: random.Random, draw: bool, kind: str = "two_image") -> Sample:
    scenes = _two_scenes(rng)
    question, answer = _two_question(rng, scenes, kind)
    return _sample(rng, kind, [_user(question, 2), _assistant(answer)], scenes, draw)


def _followup(rng: random.Random, draw: bool) -> Sample:
    """Two turns about one image; the second answer needs the image, not just the first answer."""
    scene = random_scene(rng)
    while True:
        first_kind, second_kind = rng.sample(("shape", "colour", "count", "position"), 2)
        q1, a1 = single_question(rng, scene, first_kind)
        q2, a2 = single_question(rng, scene, second_kind)
        if not _content(a2) <= _content(f"{q1} {a1} {q2}"):
            break
    messages = [_user(q1, 1), _assistant(a1), _user(q2), _assistant(a2)]
    return _sample(rng, "followup", messages, [scene], draw)


def _content(text: str) -> set[str]:
    """The words of ``text`` that carry an answer: shapes, colours, numbers, places."""
    known = {*SHAPES, *COLOURS, *NUMBERS, "top", "bottom", "left", "right"}
    return set(re.findall(r"[a-z]+", text.lower())) & known


def training_chat(rng: random.Random, draw: bool = True) -> Sample:
    """A training conversation: one or two images, then one to three questions about them."""
    turns = rng.choices(list(TURNS), list(TURNS.values()))[0]
    two = rng.random() < TWO_IMAGE_SHARE
    scenes = _two_scenes(rng) if two else [random_scene(rng)]
    mix = dict(TWO_MIX if two else SINGLE_MIX)
    messages: list[Message] = []
    for turn in range(turns):
        kind = rng.choices(list(mix), list(mix.values()))[0]
        question, answer = _two_question(rng, scenes, kind) if two else single_question(rng, scenes[0], kind)
        messages += [_user(question, len(scenes) if turn == 0 else 0), _assistant(answer)]
    return _sample(rng, "two_chat" if two else "chat", messages, scenes, draw)


def sample_stream(seed: int) -> Iterator[Sample]:
    """Endless training conversations (``training_chat``), reproducible from ``seed``."""
    rng = random.Random(seed)
    while True:
        yield training_chat(rng)


def eval_set(seed: int, kinds: tuple[str, ...], per_kind: int) -> list[Sample]:
    """``per_kind`` samples of each kind, reproducible from ``seed`` (use one training never sees)."""
    rng = random.Random(seed)
    return [make_sample(rng, kind) for kind in kinds for _ in range(per_kind)]


def corpus(seed: int = 7, size: int = 2000) -> list[list[Message]]:
    """Chats of every kind and phrasing, without images: the tokenizer's training text."""
    rng = random.Random(seed)
    return [training_chat(rng, draw=False).messages for _ in range(size)]
