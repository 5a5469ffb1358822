"""One generation: resolve the images, encode them in one call, stream the answer.

``prepare`` turns a conversation whose image parts are client sources (new images) or stored
references (session history) into an ``Encoded`` conversation: new sources go through the
media guard, then every image of the conversation (history images by id, so an evicted
embedding is recomputed from the kept bytes) is encoded in ONE ``VisionService.Encode`` call.
``stream`` sends it to the language service; if that answers NOT_FOUND for an embedding
before producing anything (evicted between the two calls, or Redis down), the images are
encoded again with ``force_inline`` and the generation is retried once. The first chunk
carries the ids of the request's new images.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace

from gateway.deadline import Deadline
from gateway.downstream import Downstream
from gateway.media_guard import MediaGuard
from gateway.messages import Chunk, ImageInput, ImageRef, ImageSource, Message, ModelInfo, Part, Sampling
from tandem.errors import InvalidInput, NotFound, Unavailable

log = logging.getLogger(__name__)

TEXT_ONLY_MESSAGE = "this model is text-only; remove the image parts"


@dataclass(frozen=True)
class Encoded:
    """A conversation ready for the language service."""

    messages: tuple[Message, ...]
    inputs: tuple[ImageInput, ...]
    new_image_ids: tuple[str, ...]

    def with_refs(self, refs: Sequence[ImageRef]) -> Encoded:
        """The same conversation with its image parts replaced, in order, by ``refs``."""
        it = iter(refs)
        messages = tuple(
            Message(m.role, tuple(p if isinstance(p, str) else next(it) for p in m.parts))
            for m in self.messages
        )
        return replace(self, messages=messages)


class Pipeline:
    """Media guard -> vision -> language, for one-off requests and session turns alike."""

    def __init__(self, guard: MediaGuard, downstream: Downstream, default_max_new_tokens: int):
        self.guard = guard
        self.downstream = downstream
        self.default_max_new_tokens = default_max_new_tokens
        self.model: ModelInfo | None = None

    def require_model(self) -> ModelInfo:
        if self.model is None:
            raise Unavailable("the gateway is still starting; retry shortly")
        return self.model

    async def prepare(self, conversation: Sequence[Message], deadline: Deadline) -> Encoded:
        """Resolve and encode every image of ``conversation``."""
        model = self.require_model()
        if not conversation:
            raise InvalidInput("the conversation is empty; send at least one user message")
        images = [img for m in conversation for img in m.images()]
        if images and not model.is_vlm:
            raise InvalidInput(TEXT_ONLY_MESSAGE)
        sources = [img for img in images if isinstance(img, ImageSource)]
        resolved = iter(await self.guard.resolve(sources, deadline))
        inputs = tuple(
            next(resolved) if isinstance(img, ImageSource) else ImageInput(image_id=img.image_id)
            for img in images
        )
        placeholders = tuple(Message(m.role, tuple(_placeholder(p) for p in m.parts)) for m in conversation)
        encoded = Encoded(placeholders, inputs, ())
        if not inputs:
            return encoded
        refs = await self.downstream.encode(inputs, force_inline=False, deadline=deadline)
        new_ids = tuple(
            r.image_id for r, img in zip(refs, images, strict=True) if isinstance(img, ImageSource)
        )
        return replace(encoded.with_refs(refs), new_image_ids=new_ids)

    async def stream(
        self, encoded: Encoded, sampling: Sampling, request_id: str, session_id: str, deadline: Deadline
    ) -> AsyncGenerator[Chunk, None]:
        """The answer's chunks; the first carries ``encoded.new_image_ids``."""
        if sampling.max_new_tokens == 0:
            sampling = replace(sampling, max_new_tokens=self.default_max_new_tokens)
        produced = False
        for attempt in range(2):
            try:
                generation = self.downstream.generate(
                    encoded.messages, sampling, request_id, session_id, deadline
                )
                async with contextlib.aclosing(generation) as chunks:
                    async for chunk in chunks:
                        yield chunk if produced else replace(chunk, image_ids=encoded.new_image_ids)
                        produced = True
                return
            except NotFound:
                if produced or attempt or not encoded.inputs:
                    raise
                log.info("request %s: an embedding was missing; re-encoding inline", request_id)
                refs = await self.downstream.encode(encoded.inputs, force_inline=True, deadline=deadline)
                encoded = encoded.with_refs(refs)


def _placeholder(part: Part) -> Part:
    """Keep text; image parts are replaced by their encoded refs in ``with_refs``."""
    return part if isinstance(part, str) else ImageRef("")
