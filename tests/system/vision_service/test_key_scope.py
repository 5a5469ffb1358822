"""A key scope (the gateway's ``--cache-scope tenant``) gives the same bytes another id per
scope: its own cache entry and stored bytes, so one scope's encode never hits another's entry."""

from __future__ import annotations

import grpc
import pytest
from vlm.v1 import vision_pb2, vision_pb2_grpc

from tandem.embeddings.ids import image_id_of, scoped_image_id
from tandem.redis_local import LocalRedis
from tandem.serving.bootstrap import channel_options
from tests.system.vision_service.test_cache import png, vision_config
from vision_service.inprocess import running_vision


def test_scoped_ids_are_per_scope_and_unscoped_ids_unchanged() -> None:
    image_id = image_id_of(b"bytes")
    assert scoped_image_id(image_id, "") == image_id
    ids = {scoped_image_id(image_id, s) for s in ("alice", "bob")}
    assert len(ids) == 2 and image_id not in ids and all(len(i) == 64 for i in ids)


async def test_each_scope_has_its_own_entry(checkpoint, redis_server: LocalRedis) -> None:  # type: ignore[no-untyped-def]
    data = png(7)
    config = vision_config(checkpoint("llava"), redis_server.url)
    options = channel_options(64 << 20)
    async with (
        running_vision(config) as vision,
        grpc.aio.insecure_channel(vision.address, options=options) as channel,
    ):
        stub = vision_pb2_grpc.VisionServiceStub(channel)

        async def encode(scope: str, **source: str | bytes) -> vision_pb2.EncodedImage:
            image = vision_pb2.ImageInput(**source)  # type: ignore[arg-type]
            return (await stub.Encode(vision_pb2.EncodeRequest(images=[image], key_scope=scope))).images[0]

        shared = await encode("", data=data)
        alice = await encode("alice", data=data)
        bob = await encode("bob", data=data)
        assert shared.ref.image_id == image_id_of(data)
        assert alice.ref.image_id == scoped_image_id(image_id_of(data), "alice")
        assert bob.ref.image_id not in (shared.ref.image_id, alice.ref.image_id)
        assert not (alice.cache_hit or bob.cache_hit)  # nothing shared across scopes
        assert (await encode("alice", data=data)).cache_hit
        again = await encode("alice", image_id=alice.ref.image_id)
        assert again.ref.image_id == alice.ref.image_id and again.cache_hit
        with pytest.raises(grpc.aio.AioRpcError) as unknown:  # another scope cannot name it...
            await encode("bob", image_id=alice.ref.image_id)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        # ...and does not spoil it
        assert (await encode("alice", image_id=alice.ref.image_id)).ref.image_id == alice.ref.image_id
