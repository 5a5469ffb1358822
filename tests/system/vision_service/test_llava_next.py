"""LLaVA-NeXT's vision half through the real vision service (gRPC on port 0, real Redis).

Features equal HF ``get_image_features`` (tiles, unpadding, ``image_newline``) for images of
different sizes in one batch, their token counts equal ``LlavaNextProcessor``'s expansion, the
records come back from Redis unchanged, and the any-resolution settings are in the fingerprint.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
from pathlib import Path

import grpc
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, LlavaNextForConditionalGeneration
from vlm.v1 import vision_pb2, vision_pb2_grpc

from tandem.embeddings.cache import decode_inline
from tandem.models.fingerprint import VISION_WEIGHT_PREFIXES, fingerprint
from tandem.testing.checkpoints import make_test_image
from vision_service.adapters import Pixels, load_adapter
from vision_service.adapters.llava_next import LlavaNextAdapter, TiledPixels
from vision_service.config import VisionConfig
from vision_service.inprocess import running_vision

SIZES = ((112, 56), (56, 112), (64, 48), (32, 32), (200, 30))  # (width, height)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def hf_reference(path: Path, images: list[Image.Image]) -> tuple[list[torch.Tensor], list[int]]:
    """HF's features per image, and the ``<image>`` tokens the processor expands each image to."""
    model = LlavaNextForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    features, counts = [], []
    for image in images:
        inputs = processor(images=[image], text="USER: <image>\nWhat? ASSISTANT:", return_tensors="pt")
        with torch.no_grad():
            out = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
        features.append(out.pooler_output[0])
        counts.append(int((inputs["input_ids"] == processor.image_token_id).sum()))
    return features, counts


async def test_features_equal_hf_and_survive_a_redis_round_trip(checkpoint, redis_server) -> None:
    path = checkpoint("llava_next")
    images = [make_test_image(i, size) for i, size in enumerate(SIZES)]
    expected, counts = hf_reference(path, images)
    assert len(set(counts)) == len(SIZES)  # every size costs its own token count
    config = VisionConfig(
        model=str(path), redis_url=redis_server.url, port=0, cache_prefix=f"t{uuid.uuid4().hex[:8]}"
    )
    async with running_vision(config) as vision, grpc.aio.insecure_channel(vision.address) as channel:
        stub = vision_pb2_grpc.VisionServiceStub(channel)
        inputs = [vision_pb2.ImageInput(data=png(i)) for i in images]
        response = await stub.Encode(vision_pb2.EncodeRequest(images=inputs, force_inline=True))
        assert vision.service.metrics.get("vision_encoder_batches") == 1
        cache = vision.service.cache
        for result, want, count in zip(response.images, expected, counts, strict=True):
            ref = result.ref
            sent = decode_inline(ref.inline_record, cache.expected(ref.image_id))
            assert ref.num_tokens == count == want.shape[0] and list(ref.grid_thw) == []
            assert torch.equal(sent.features, want)
            stored = await cache.get(ref.image_id, num_tokens=count)
            assert stored is not None and stored.header == sent.header
            assert torch.equal(stored.features, sent.features)


def test_image_newline_ends_every_row_of_the_tiles(checkpoint) -> None:
    adapter = load_adapter(checkpoint("llava_next"))
    assert isinstance(adapter, LlavaNextAdapter)
    pixels = adapter.preprocess(make_test_image(1, (112, 56)))  # a 1x2 tile grid: 4 rows of 8
    assert isinstance(pixels, TiledPixels) and pixels.image_size == (56, 112)
    assert pixels.values.shape[0] == 3  # base view + 2 tiles
    (features,) = adapter.encode([pixels])
    newline = adapter.module.image_newline
    rows = features[16:].view(4, 9, -1)
    assert torch.equal(rows[:, -1], newline.expand(4, -1))
    assert not torch.isclose(rows[:, :-1], newline).all(-1).any()
    with pytest.raises(ValueError, match="original size"):
        adapter.encode([Pixels(pixels.values)])


def test_grid_pinpoints_and_image_newline_are_in_the_fingerprint(checkpoint, tmp_path: Path) -> None:
    path = checkpoint("llava_next")
    base = fingerprint(path, "m")
    pinpoints = shutil.copytree(path, tmp_path / "pinpoints")
    processor = json.loads((pinpoints / "processor_config.json").read_text())
    processor["image_processor"]["image_grid_pinpoints"] = [[32, 64], [64, 32]]
    (pinpoints / "processor_config.json").write_text(json.dumps(processor))
    newline = shutil.copytree(path, tmp_path / "newline")
    tensors = load_file(newline / "model.safetensors")
    tensors["image_newline"] = tensors["image_newline"] + 1
    save_file(tensors, newline / "model.safetensors", metadata={"format": "pt"})
    assert len({base, fingerprint(pinpoints, "m"), fingerprint(newline, "m")}) == 3


def test_worker_holds_only_the_vision_half_in_either_layout(checkpoint, tmp_path: Path) -> None:
    path = checkpoint("llava_next")
    adapter = load_adapter(path)
    with safe_open(path / "model.safetensors", framework="pt") as handle:
        sizes = {name: handle.get_slice(name).get_shape() for name in handle.keys()}  # noqa: SIM118
    vision = sum(torch.Size(s).numel() for n, s in sizes.items() if n.startswith(VISION_WEIGHT_PREFIXES))
    assert sum(p.numel() for p in adapter.module.parameters()) == vision
    assert vision < sum(torch.Size(s).numel() for s in sizes.values())
    new = shutil.copytree(path, tmp_path / "new-layout")  # transformers >= 4.52 names
    tensors = load_file(new / "model.safetensors")
    renamed = {("model." + k if not k.startswith("language_model.") else k): v for k, v in tensors.items()}
    save_file(renamed, new / "model.safetensors", metadata={"format": "pt"})
    state = load_adapter(new).module.state_dict()
    assert state.keys() == adapter.module.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in adapter.module.state_dict().items())
