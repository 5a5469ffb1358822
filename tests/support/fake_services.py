"""Small fake vision and language services: real ``grpc.aio`` servicers that record and script.

``FakeVision`` encodes every image to a fixed 4-token ref and remembers the bytes it saw, so a
later call may name an image by id; ``FakeLanguage`` answers "u<number of user messages>" in
``chunks`` chunks. Both record what reached them (requests, the caller's remaining time,
cancellations) and can be scripted (a delay, a failure status, evicted embeddings), so a test
checks the gateway's wiring without a model.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio
from vlm.v1 import common_pb2, llm_pb2, llm_pb2_grpc, vision_pb2, vision_pb2_grpc

from tandem.serving.bootstrap import GrpcServer
from tandem.serving.config import ServerConfig

FINGERPRINT = "f" * 16


def sha(data: bytes) -> str:
    """The image id the services give ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class FakeVision(vision_pb2_grpc.VisionServiceServicer):
    """Encodes to fixed 4-token refs; remembers bytes so image ids can be resolved later."""

    calls: list[vision_pb2.EncodeRequest] = field(default_factory=list)
    known: dict[str, bytes] = field(default_factory=dict)
    timeouts: list[float | None] = field(default_factory=list)
    delay: float = 0.0
    cancelled: int = 0

    async def Encode(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append(request)
        self.timeouts.append(context.time_remaining())
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        out = vision_pb2.EncodeResponse()
        for image in request.images:
            if image.WhichOneof("source") == "data":
                image_id = sha(image.data)
                self.known[image_id] = image.data
            elif image.image_id in self.known:
                image_id = image.image_id
            else:
                await context.abort(grpc.StatusCode.NOT_FOUND, "unknown image id; send the image again")
            inline = b"inline" if request.force_inline else b""
            ref = common_pb2.ImageRef(image_id=image_id, num_tokens=4, inline_record=inline)
            out.images.add(ref=ref, cache_hit=False)
        return out

    async def GetVisionInfo(self, request, context):  # type: ignore[no-untyped-def]
        return vision_pb2.GetVisionInfoResponse(
            info=common_pb2.ModelInfo(fingerprint=FINGERPRINT, is_vlm=True)
        )


@dataclass
class FakeLanguage(llm_pb2_grpc.LanguageServiceServicer):
    """Answers "u<number of user messages>" in three chunks; scriptable failures and delays."""

    name: str = "llm"
    is_vlm: bool = True
    delay: float = 0.0
    chunks: int = 3
    evicted: set[str] = field(default_factory=set)
    fail: tuple[grpc.StatusCode, str] | None = None
    hold_after_answer: asyncio.Event | None = None  # the final message sent, end the call once set
    fail_after_answer: tuple[grpc.StatusCode, str] | None = None
    ended: list[str] = field(default_factory=list)  # how each generation's call ended
    requests: list[llm_pb2.GenerateTokensRequest] = field(default_factory=list)
    released: list[llm_pb2.ReleaseSessionRequest] = field(default_factory=list)
    timeouts: list[float | None] = field(default_factory=list)
    running: int = 0
    cancelled: int = 0

    async def GenerateTokens(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        self.timeouts.append(context.time_remaining())
        if self.fail is not None:
            await context.abort(*self.fail)
        refs = [p.image for m in request.messages for p in m.parts if p.WhichOneof("kind") == "image"]
        if any(r.image_id in self.evicted and not r.inline_record for r in refs):
            await context.abort(grpc.StatusCode.NOT_FOUND, "embedding not in the cache")
        users = sum(m.role == common_pb2.ROLE_USER for m in request.messages)
        self.running += 1
        try:
            for i in range(self.chunks):
                await asyncio.sleep(self.delay)
                yield llm_pb2.GenerateTokensResponse(text=f"u{users}" if i == 0 else ".", token_ids=[i])
            usage = common_pb2.Usage(
                prompt_tokens=10, image_tokens=4 * len(refs), completion_tokens=self.chunks
            )
            yield llm_pb2.GenerateTokensResponse(finish_reason=common_pb2.FINISH_REASON_STOP, usage=usage)
            if self.hold_after_answer is not None:
                await self.hold_after_answer.wait()
            if self.fail_after_answer is not None:
                self.ended.append(self.fail_after_answer[0].name)
                await context.abort(*self.fail_after_answer)
            self.ended.append("OK")
        except asyncio.CancelledError:
            self.cancelled += 1
            self.ended.append("CANCELLED")
            raise
        finally:
            self.running -= 1

    async def ReleaseSession(self, request, context):  # type: ignore[no-untyped-def]
        self.released.append(request)
        return llm_pb2.ReleaseSessionResponse()

    async def GetLanguageInfo(self, request, context):  # type: ignore[no-untyped-def]
        info = common_pb2.ModelInfo(
            model="fake", architecture="Fake", is_vlm=self.is_vlm, fingerprint=FINGERPRINT
        )
        return llm_pb2.GetLanguageInfoResponse(info=info)


async def serve_fake(
    servicer: Any,
    add: Callable[[Any, aio.Server], None],
    port: int = 0,
    token: str | None = None,
    host: str = "127.0.0.1",
) -> GrpcServer:
    """``servicer`` on a real server (port 0: any free port), already SERVING."""
    options = ServerConfig(host=host, port=port, grace_seconds=0, auth_token=token)
    server = GrpcServer(options, [lambda s: add(servicer, s)], ["fake"])
    await server.start()
    await server.set_serving()
    return server


async def idle(llm: FakeLanguage, within: float = 2.0) -> bool:
    """True once no generation of ``llm`` is running (waits up to ``within`` seconds)."""
    stop = time.monotonic() + within
    while llm.running and time.monotonic() < stop:
        await asyncio.sleep(0.02)
    return llm.running == 0
