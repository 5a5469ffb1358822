"""The shipped default model: loads like a hub checkpoint, looks at the image, and is accurate.

In-process Hugging Face only (``AutoProcessor`` + ``AutoModelForImageTextToText``, greedy
``generate``); tests/system/default_model/test_system.py asks the same through the running services.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from recipes.default_model.batch import IGNORE, Encoder
from recipes.default_model.data import KINDS, eval_set, make_sample
from recipes.default_model.evaluate import InProcess, answer_all, score
from recipes.default_model.scenes import IMAGE_SIZE
from tandem.default_model import CHECKPOINT
from tests.support import ROOT
from tests.support.pictures import picture

FOLLOWUP_FLOOR = 0.75  # the shipped model scores higher on this set; see README "The default model"


@pytest.fixture(scope="module")
def model() -> InProcess:
    torch.set_num_threads(1)
    return InProcess(CHECKPOINT)


def ask(model: InProcess, text: str, *images: Image.Image) -> str:
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
    return model([([{"role": "user", "content": content}], list(images))])[0]


def test_checkpoint_is_a_small_float16_llava() -> None:
    config = json.loads((CHECKPOINT / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    weights = CHECKPOINT / "model.safetensors"
    assert weights.stat().st_size <= 8 * 1024 * 1024
    for name in ("tokenizer.json", "processor_config.json", "chat_template.jinja", "generation_config.json"):
        assert (CHECKPOINT / name).is_file(), name


def test_loads_with_auto_classes(model: InProcess) -> None:
    assert type(model.model).__name__ == "LlavaForConditionalGeneration"
    assert type(model.processor).__name__ == "LlavaProcessor"
    assert model.processor.tokenizer.chat_template or model.processor.chat_template


@pytest.mark.parametrize(
    ("items", "question", "answer"),
    [
        ((("circle", "red", 0),), "What shape is this?", "It is a red circle."),
        ((("square", "blue", 3),), "What shape is this?", "It is a blue square."),
        (
            (("triangle", "green", 0), ("star", "yellow", 3)),
            "What colour is the star?",
            "The star is yellow.",
        ),
        (
            (("triangle", "green", 0), ("star", "yellow", 3)),
            "What colour is the triangle?",
            "The triangle is green.",
        ),
        (
            (("triangle", "green", 0), ("star", "yellow", 3)),
            "How many shapes are there?",
            "There are two shapes.",
        ),
        (
            (("diamond", "purple", 1), ("circle", "orange", 2)),
            "Where is the circle?",
            "The circle is at the bottom left.",
        ),
    ],
)
def test_answers_what_the_picture_shows(
    model: InProcess, items: tuple[tuple[str, str, int], ...], question: str, answer: str
) -> None:
    assert ask(model, question, picture(*items)) == answer


def test_answer_follows_the_image(model: InProcess) -> None:
    """Same question, different picture: the answer changes with the picture, not the prompt."""
    question = "What shape is this?"
    answers = {
        (shape, colour): ask(model, question, picture((shape, colour, 1)))
        for shape, colour in [
            ("circle", "red"),
            ("star", "blue"),
            ("triangle", "yellow"),
            ("diamond", "green"),
        ]
    }
    assert answers == {(s, c): f"It is {'a' if c != 'orange' else 'an'} {c} {s}." for s, c in answers}


def test_image_order_matters(model: InProcess) -> None:
    red_square = picture(("square", "red", 1))
    blue_circle = picture(("circle", "blue", 2), ("square", "green", 0))
    question = "Which image has the red square, the first or the second?"
    assert ask(model, question, red_square, blue_circle) == "The first image."
    assert ask(model, question, blue_circle, red_square) == "The second image."


def test_followup_uses_the_earlier_image(model: InProcess) -> None:
    """The second, text-only turn is answered from the image of the first turn."""
    image = picture(("star", "blue", 0), ("circle", "red", 3))
    first = {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "How many shapes are there?"}],
    }
    reply = {"role": "assistant", "content": [{"type": "text", "text": "There are two shapes."}]}
    second = {"role": "user", "content": [{"type": "text", "text": "What colour is the star?"}]}
    assert model([([first, reply, second], [image])]) == ["The star is blue."]
    samples = eval_set(99, ("followup",), 50)
    scores = score(samples, answer_all(samples, model))
    assert scores["followup"]["accuracy"] >= FOLLOWUP_FLOOR, scores


def test_single_image_colour_and_shape_questions_are_right_95_percent(model: InProcess) -> None:
    """The issue's bar, on held-out pictures (seed 4321; training draws from seeds 0 and 1)."""
    samples = eval_set(4321, ("shape", "colour"), 100)
    scores = score(samples, answer_all(samples, model))
    assert scores["shape"]["accuracy"] >= 0.95 and scores["colour"]["accuracy"] >= 0.95, scores


def test_training_encoding_matches_the_processor(model: InProcess) -> None:
    encoder = Encoder(model.processor)
    rng = random.Random(3)
    for kind in KINDS:
        sample = make_sample(rng, kind)
        ids, labels = encoder.encode(sample)
        text = model.processor.apply_chat_template(sample.messages)
        expected = model.processor(images=sample.images, text=text, return_tensors="pt")["input_ids"][0]
        assert ids == expected.tolist()
        answers = [m["content"][0]["text"] for m in sample.messages if m["role"] == "assistant"]
        target = model.processor.tokenizer.decode([t for t in labels if t != IGNORE])
        assert target == "</s> ".join(answers) + "</s>"


def test_every_word_is_one_token(model: InProcess) -> None:
    tokenizer = model.processor.tokenizer
    words = {w.strip("?.,") for s in eval_set(5, KINDS, 10) for m in s.messages for w in _texts(m)}
    long = {w: tokenizer.tokenize(" " + w) for w in words if len(tokenizer.tokenize(" " + w)) > 1}
    assert not long


def test_data_is_reproducible_and_consistent() -> None:
    a, b = eval_set(11, KINDS, 3), eval_set(11, KINDS, 3)
    assert [s.messages for s in a] == [s.messages for s in b]
    pixels = [[image.tobytes() for image in sample.images] for sample in a]
    assert pixels == [[image.tobytes() for image in sample.images] for sample in b]
    assert [s.messages for s in eval_set(12, KINDS, 3)] != [s.messages for s in a]
    for sample in a:
        placeholders = sum(p["type"] == "image" for m in sample.messages for p in m["content"])
        assert placeholders == len(sample.images) == (2 if sample.kind.startswith("two_") else 1)
        assert all(image.size == (IMAGE_SIZE, IMAGE_SIZE) for image in sample.images)


def _texts(message: dict[str, object]) -> list[str]:
    content = message["content"]
    assert isinstance(content, list)
    return [w for part in content if part["type"] == "text" for w in part["text"].split()]


def test_checkpoint_path_is_inside_the_package() -> None:
    root = ROOT
    assert root / "tandem" / "default_model" / "checkpoint" == CHECKPOINT


@pytest.mark.slow
def test_wheel_ships_the_checkpoint(tmp_path: Path) -> None:
    """``pip install .`` (not only an editable install) gets the default model, not its recipe."""
    import subprocess
    import sys
    import zipfile

    root = ROOT
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    done = subprocess.run([*command, str(root)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("tandem-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for file in CHECKPOINT.iterdir():
        assert f"tandem/default_model/checkpoint/{file.name}" in names, file.name
    tooling = [n for n in names if n.startswith(("recipes/", "tandem/testing/", "tests/"))]
    assert not tooling, f"development tooling in the wheel: {tooling}"
