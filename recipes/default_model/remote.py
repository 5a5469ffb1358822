"""Ask a running Tandem gateway the evaluation questions, through the Python client only.

The client (``tandem.client``) sends each picture as the PNG of its pixels (lossless, so the
services see exactly what ``generate()`` in-process sees) to the gateway's public ``Generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from PIL import Image

from recipes.default_model.data import Message
from recipes.default_model.evaluate import Request
from tandem.client import GenerationConfig, Pipeline


def to_prompt(messages: list[Message], images: list[Image.Image]) -> list[Message]:
    """The client's messages form: each ``{"type": "image"}`` part takes the next image."""
    pending = iter(images)
    return [
        {
            "role": message["role"],
            "content": [
                {"type": "image", "image": next(pending)} if part["type"] == "image" else part
                for part in message["content"]
            ],
        }
        for message in messages
    ]


class GatewayAnswerer:
    """Answers requests with ``GatewayService.Generate``, ``concurrency`` at a time, greedily
    (a context manager)."""

    def __init__(self, address: str, concurrency: int = 8, timeout: float = 120.0, max_new_tokens: int = 32):
        self._pipe = Pipeline(
            address,
            gen_config=GenerationConfig(max_new_tokens=max_new_tokens),  # temperature 0: greedy
            timeout=timeout,
            max_concurrency=concurrency,
        )

    def __call__(self, requests: Sequence[Request]) -> list[str]:
        answers = self._pipe.infer([to_prompt(*request) for request in requests])
        return [answer.text.strip() for answer in answers]

    def ask(self, messages: list[Message], images: list[Image.Image]) -> str:
        """One conversation's answer text."""
        return self._pipe.infer(to_prompt(messages, images)).text.strip()

    def close(self) -> None:
        self._pipe.close()

    def __enter__(self) -> GatewayAnswerer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
