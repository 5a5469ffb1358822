"""The vision service through real gRPC servers on port 0, real Redis and tiny HF checkpoints."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor, LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration
from vlm.v1 import vision_pb2, vision_pb2_grpc

from tandem.embeddings.cache import decode_inline, image_id_of
from tandem.models.fingerprint import VISION_WEIGHT_PREFIXES, fingerprint
from tandem.serving.bootstrap import channel_options
from tandem.testing.checkpoints import make_test_image
from tests.support.png_bomb import png_claiming
from vision_service.__main__ import main
from vision_service.adapters import UnsupportedModel, load_adapter
from vision_service.app import VisionApp
from vision_service.config import VisionConfig
from vision_service.inprocess import running_vision
from vision_service.servicer import SERVICE_NAME

FULL_MODELS: dict[str, Any] = {
    "llava": LlavaForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
}


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def vision_config(model: Path, redis_url: str = "", **overrides: Any) -> VisionConfig:
    values: dict[str, Any] = {"model": str(model), "redis_url": redis_url, "port": 0, "reflection": False}
    values["cache_prefix"] = f"t{uuid.uuid4().hex[:8]}"
    return VisionConfig(**(values | overrides))


def stub_for(address: str) -> tuple[grpc.aio.Channel, vision_pb2_grpc.VisionServiceStub]:
    channel = grpc.aio.insecure_channel(address, options=channel_options(64 << 20))
    return channel, vision_pb2_grpc.VisionServiceStub(channel)


def request(
    *images: bytes | str, force_inline: bool = False, media_type: str = ""
) -> vision_pb2.EncodeRequest:
    inputs = [
        vision_pb2.ImageInput(image_id=i, media_type=media_type)
        if isinstance(i, str)
        else vision_pb2.ImageInput(data=i, media_type=media_type)
        for i in images
    ]
    return vision_pb2.EncodeRequest(images=inputs, force_inline=force_inline)


def hf_features(path: Path, kind: str, images: list[Image.Image]) -> tuple[list[torch.Tensor], Any]:
    """The reference: HF full model's get_image_features with the checkpoint's own processor."""
    model = FULL_MODELS[kind].from_pretrained(path).eval()
    inputs = AutoProcessor.from_pretrained(path).image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        if kind == "llava":
            out = model.get_image_features(pixel_values=inputs["pixel_values"])
        else:
            out = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    return list(out.pooler_output), inputs.get("image_grid_thw")


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
async def test_embeddings_equal_hf_and_hits_skip_the_encoder(checkpoint, redis_server, kind: str) -> None:
    path = checkpoint(kind)
    images = [make_test_image(1), make_test_image(2, (90, 60)), make_test_image(3, (1, 1))]
    expected, grids = hf_features(path, kind, images)
    async with running_vision(vision_config(path, redis_server.url)) as vision:
        channel, stub = stub_for(vision.address)
        async with channel:
            data = [png(i) for i in images]
            first = await stub.Encode(request(*data, force_inline=True))
            metrics = vision.service.metrics
            assert metrics.get("vision_images_encoded") == 3
            assert metrics.get("vision_encoder_batches") == 1  # one batch
            for n, (result, want) in enumerate(zip(first.images, expected, strict=True)):
                ref = result.ref
                assert not result.cache_hit and ref.image_id == image_id_of(data[n])
                got = decode_inline(ref.inline_record, vision.service.cache.expected(ref.image_id)).features
                assert got.shape == want.shape and ref.num_tokens == want.shape[0]
                assert torch.equal(got, want)
                assert list(ref.grid_thw) == ([] if grids is None else grids[n].tolist())
                cached = await vision.service.cache.get(ref.image_id)
                assert cached is not None and torch.equal(cached.features, want)
            again = await stub.Encode(request(*data))
            assert all(r.cache_hit and not r.ref.inline_record for r in again.images)
            assert [r.ref.num_tokens for r in again.images] == [r.ref.num_tokens for r in first.images]
            assert metrics.get("vision_images_encoded") == 3  # no encoder ran for the hits


async def test_image_id_references_and_eviction(checkpoint, redis_server) -> None:
    async with running_vision(vision_config(checkpoint("llava"), redis_server.url)) as vision:
        channel, stub = stub_for(vision.address)
        async with channel:
            data = png(make_test_image(5))
            first = (await stub.Encode(request(data, force_inline=True))).images[0]
            image_id = first.ref.image_id
            by_id = (await stub.Encode(request(image_id, force_inline=True))).images[0]
            assert by_id.cache_hit and by_id.ref.inline_record == first.ref.inline_record
            await vision.service.cache.store.delete(vision.service.cache.key(image_id))  # evicted
            again = (await stub.Encode(request(image_id, force_inline=True))).images[0]
            assert not again.cache_hit and again.ref.inline_record == first.ref.inline_record
            assert vision.service.metrics.get("vision_images_encoded") == 2

            unknown = "ab" * 32
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Encode(request(unknown))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "send the image bytes again" in (info.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Encode(request("not-an-id"))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_bad_images_are_invalid_argument_and_the_server_keeps_serving(checkpoint, redis_server) -> None:
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, "TIFF")
    good = png(make_test_image(7))
    cases = {
        "empty": request(b""),
        "garbage": request(b"\x00\x01garbage" * 50),
        "truncated": request(good[: len(good) // 2]),
        "bomb": request(png_claiming(100_000, 100_000)),
        "too many pixels": request(png(Image.new("RGB", (400, 300)))),
        "too many bytes": request(b"\x89PNG\r\n\x1a\n" + bytes(300_000)),
        "1x10000": request(png_claiming(1, 10_000)),
        "tiff": request(tiff.getvalue()),
        "svg": request(b"<svg xmlns='http://www.w3.org/2000/svg'/>", media_type="image/svg+xml"),
        "mismatch": request(good, media_type="image/jpeg"),
        "no source": vision_pb2.EncodeRequest(images=[vision_pb2.ImageInput()]),
        "no images": vision_pb2.EncodeRequest(),
        "one bad among good": request(good, b"junk" * 10),
    }
    config = vision_config(
        checkpoint("qwen2_vl"), redis_server.url, max_image_pixels=100_000, max_image_bytes=200_000
    )
    async with running_vision(config) as vision:
        channel, stub = stub_for(vision.address)
        async with channel:
            for name, bad in cases.items():
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Encode(bad)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
                details = info.value.details() or ""
                assert details and "Traceback" not in details and "object at" not in details, name
            ok = await stub.Encode(request(good, png(Image.new("RGB", (1, 1))), media_type="image/png"))
            assert len(ok.images) == 2 and all(r.ref.num_tokens > 0 for r in ok.images)


async def test_vision_info(checkpoint) -> None:
    path = checkpoint("qwen2_vl")
    async with running_vision(vision_config(path)) as vision:
        channel, stub = stub_for(vision.address)
        async with channel:
            info = (await stub.GetVisionInfo(vision_pb2.GetVisionInfoRequest())).info
    assert info.architecture == "Qwen2VLForConditionalGeneration" and info.is_vlm
    assert info.model == str(path) and info.fingerprint == fingerprint(path, str(path))
    assert (
        info.context_length
        == json.loads((path / "config.json").read_text())["text_config"]["max_position_embeddings"]
    )


async def test_not_serving_and_unavailable_until_the_weights_are_warm(checkpoint) -> None:
    app = VisionApp(vision_config(checkpoint("llava")))
    port = await app.server.start()
    try:
        channel, stub = stub_for(f"127.0.0.1:{port}")
        async with channel:
            health = health_pb2_grpc.HealthStub(channel)
            before = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert before.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as loading:
                await stub.GetVisionInfo(vision_pb2.GetVisionInfoRequest())
            assert loading.value.code() == grpc.StatusCode.UNAVAILABLE
            await app.warmup()
            await app.server.set_serving()
            after = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            assert after.status == health_pb2.HealthCheckResponse.SERVING
            assert (await stub.GetVisionInfo(vision_pb2.GetVisionInfoRequest())).info.is_vlm
    finally:
        await app.stop()


async def test_without_redis_everything_is_inline(checkpoint) -> None:
    async with running_vision(vision_config(checkpoint("llava"))) as vision:
        channel, stub = stub_for(vision.address)
        async with channel:
            data = png(make_test_image(11))
            for _ in range(2):
                result = (await stub.Encode(request(data))).images[0]
                assert result.ref.inline_record and not result.cache_hit
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Encode(request(result.ref.image_id))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_models_and_processor_settings_never_share_a_key(
    checkpoint, redis_server, tmp_path: Path
) -> None:
    llava = checkpoint("llava")
    changed = tmp_path / "llava-changed"
    shutil.copytree(llava, changed)
    processor = json.loads((changed / "processor_config.json").read_text())
    processor["image_processor"]["image_mean"] = [0.5, 0.5, 0.5]
    (changed / "processor_config.json").write_text(json.dumps(processor))
    prints = {fingerprint(p, str(p)) for p in (llava, changed, checkpoint("qwen2_vl"))}
    assert len(prints) == 3
    assert fingerprint(llava, str(llava), revision="v2") != fingerprint(llava, str(llava))

    data = png(make_test_image(13))
    prefix = f"t{uuid.uuid4().hex[:8]}"
    features = []
    for path in (llava, changed):
        async with running_vision(vision_config(path, redis_server.url, cache_prefix=prefix)) as vision:
            channel, stub = stub_for(vision.address)
            async with channel:
                result = (await stub.Encode(request(data, force_inline=True))).images[0]
            assert not result.cache_hit and vision.service.metrics.get("vision_images_encoded") == 1
            features.append(
                decode_inline(result.ref.inline_record, vision.service.cache.expected(result.ref.image_id))
            )
    assert not torch.equal(features[0].features, features[1].features)


def test_worker_holds_only_the_vision_half(checkpoint) -> None:
    for kind in ("llava", "qwen2_vl"):
        path = checkpoint(kind)
        adapter = load_adapter(path)
        with safe_open(path / "model.safetensors", framework="pt") as handle:
            sizes = {name: handle.get_slice(name).get_shape() for name in handle.keys()}  # noqa: SIM118
        vision = sum(torch.Size(s).numel() for n, s in sizes.items() if n.startswith(VISION_WEIGHT_PREFIXES))
        total = sum(torch.Size(s).numel() for s in sizes.values())
        held = sum(p.numel() for p in adapter.module.parameters())
        assert held == vision < total, kind
        assert all(p.device.type == "cpu" for p in adapter.module.parameters())
        assert all(b.device.type == "cpu" for b in adapter.module.buffers())


def test_unknown_architecture_lists_the_supported_ones(checkpoint, tmp_path: Path, caplog) -> None:
    path = tmp_path / "foo"
    shutil.copytree(checkpoint("llava"), path)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["FooForConditionalGeneration"]
    (path / "config.json").write_text(json.dumps(config))
    supported = r"supported: .*LlavaForConditionalGeneration, LlavaNextForConditionalGeneration"
    with pytest.raises(UnsupportedModel, match=supported):
        load_adapter(path)
    assert main(["--model", str(path), "--port", "0"]) == 2
    assert "FooForConditionalGeneration" in caplog.text and "supported:" in caplog.text
