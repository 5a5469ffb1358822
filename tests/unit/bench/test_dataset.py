"""The synthetic workloads: seeded, the reuse ratio exact, images of the sizes asked for."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tandem.bench.dataset import DatasetConfig, build_dataset, parse_size


def mm(**kw: object) -> DatasetConfig:
    return DatasetConfig(name="random-mm", **kw)  # type: ignore[arg-type]


def images(config: DatasetConfig) -> list:  # type: ignore[type-arg]
    conversations, _ = build_dataset(config)
    return [image for c in conversations for image in c.turns[0].images]


def test_same_seed_same_workload_other_seed_other_workload() -> None:
    config = mm(num_conversations=12, turns=2, reuse=0.5, pool_size=4)
    assert build_dataset(config, warmup=2) == build_dataset(config, warmup=2)
    other = build_dataset(DatasetConfig(**{**config.__dict__, "seed": 1}))[0]
    assert other != build_dataset(config)[0]


@pytest.mark.parametrize(("reuse", "expected"), [(0.0, 0), (0.25, 10), (0.8, 32), (1.0, 39)])
def test_reuse_ratio_is_exact(reuse: float, expected: int) -> None:
    shown = images(mm(num_conversations=40, reuse=reuse, pool_size=100))
    assert sum(image.reused for image in shown) == expected
    assert len({image.key for image in shown}) == 40 - expected


def test_reused_images_were_sent_before_and_come_from_the_pool() -> None:
    shown = images(mm(num_conversations=60, images_per_request=2, reuse=0.5, pool_size=5))
    sent: set[str] = set()
    pool = {image.key for image in shown if not image.reused}
    for image in shown:
        if image.reused:
            assert image.key in sent
            assert int(image.key.split("-")[1]) < 5  # only the first 5 new images are reusable
        else:
            assert image.key not in sent
        sent.add(image.key)
    assert len(pool) == 60 * 2 - round(0.5 * 120)
    same = {image.key: image.data_url for image in shown}
    assert all(image.data_url == same[image.key] for image in shown)


def test_images_have_the_sizes_asked_for_and_differ() -> None:
    sizes = ((224, 224), (320, 240))
    shown = images(mm(num_conversations=10, image_sizes=sizes, image_format="png"))
    decoded = [Image.open(io.BytesIO(base64.b64decode(i.data_url.split(",", 1)[1]))) for i in shown]
    assert {im.size for im in decoded} == set(sizes)
    assert all(i.data_url.startswith("data:image/png;base64,") for i in shown)
    assert all(im.size == i.size for im, i in zip(decoded, shown, strict=True))
    assert len({i.data_url for i in shown}) == 10


def test_warmup_has_images_of_its_own() -> None:
    measured, warm = build_dataset(mm(num_conversations=5), warmup=3)
    assert len(warm) == 3
    keys = {i.key for c in measured for i in c.turns[0].images}
    assert keys.isdisjoint(i.key for c in warm for i in c.turns[0].images)
    assert {c.turns[0].text for c in measured}.isdisjoint(c.turns[0].text for c in warm)


def test_turns_lengths_and_text_only() -> None:
    config = DatasetConfig(num_conversations=50, turns=3, prompt_len=20, output_len=40, range_ratio=0.5)
    conversations, _ = build_dataset(config)
    assert all(len(c.turns) == 3 for c in conversations)
    assert all(not turn.images for c in conversations for turn in c.turns)
    outputs = [turn.output_len for c in conversations for turn in c.turns]
    words = [len(turn.text.split()) for c in conversations for turn in c.turns]
    assert min(outputs) >= 20 and max(outputs) <= 60 and len(set(outputs)) > 5
    assert min(words) >= 10 and max(words) <= 30


def test_images_only_in_the_first_turn() -> None:
    conversations, _ = build_dataset(mm(num_conversations=3, turns=3, images_per_request=2))
    assert all(len(c.turns[0].images) == 2 and not c.turns[1].images for c in conversations)


def test_parse_size_and_bad_configs() -> None:
    assert parse_size("640X480") == (640, 480)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("640")
    with pytest.raises(ValueError, match="reuse"):
        mm(reuse=1.5)
    with pytest.raises(ValueError, match="turns"):
        DatasetConfig(turns=0)
    with pytest.raises(ValueError, match="name"):
        DatasetConfig(name="sharegpt")  # type: ignore[arg-type]
