"""Ask a running Tandem gateway the evaluation questions, through its public gRPC API only."""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import grpc
from PIL import Image
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from tandem.default_model.data import Message

ROLES = {
    "system": common_pb2.ROLE_SYSTEM,
    "user": common_pb2.ROLE_USER,
    "assistant": common_pb2.ROLE_ASSISTANT,
}
Request = tuple[list[Message], list[Image.Image]]


def png_bytes(image: Image.Image) -> bytes:
    """The image as a PNG file (lossless, so the service sees exactly these pixels)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_request(messages: list[Message], images: list[Image.Image], max_new_tokens: int) -> Any:
    """A ``GenerateRequest``: each ``{"type": "image"}`` part takes the next image, greedy sampling."""
    pending = iter(images)
    chat = []
    for message in messages:
        parts = [
            gateway_pb2.Part(image=gateway_pb2.ImageSource(data=png_bytes(next(pending))))
            if part["type"] == "image"
            else gateway_pb2.Part(text=part["text"])
            for part in message["content"]
        ]
        chat.append(gateway_pb2.ChatMessage(role=ROLES[message["role"]], parts=parts))
    sampling = common_pb2.SamplingParams(max_new_tokens=max_new_tokens)  # temperature 0: greedy
    return gateway_pb2.GenerateRequest(messages=chat, sampling=sampling)


class GatewayAnswerer:
    """Answers requests with ``GatewayService.Generate``, ``concurrency`` at a time (a context manager)."""

    def __init__(self, address: str, concurrency: int = 8, timeout: float = 120.0, max_new_tokens: int = 32):
        self._channel = grpc.insecure_channel(address)
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._pool = ThreadPoolExecutor(concurrency)
        self._timeout = timeout
        self._max_new_tokens = max_new_tokens

    def __call__(self, requests: Sequence[Request]) -> list[str]:
        return list(self._pool.map(lambda request: self.ask(*request), requests))

    def ask(self, messages: list[Message], images: list[Image.Image]) -> str:
        """One conversation's answer text, streamed and joined."""
        request = to_request(messages, images, self._max_new_tokens)
        stream = self._stub.Generate(request, timeout=self._timeout)
        return "".join(response.text for response in stream).strip()

    def close(self) -> None:
        self._pool.shutdown()
        self._channel.close()

    def __enter__(self) -> GatewayAnswerer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
