"""One generation: resolve the images, encode them in one call, stream the answer.

``prepare`` turns a conversation whose image parts are client sources (new images) or stored
references (session history) into an ``Encoded`` conversation: new sources go through the
media guard, then every image of the conversation (history images by id, so an evicted
embedding is recomputed from the kept bytes) is encoded in ONE ``VisionService.Encode`` call.
``stream`` sends it to the language service; if that answers NOT_FOUND for an embedding
before producing anything (evicted between the two calls, or Redis down), the images are
encoded again with ``force_inline`` and the generation is retried once. The first chunk
carries the ids of the request's new images. With ``tenant_scoped`` (``--cache-scope tenant``)
every Encode of a tenant carries its key scope, so its image ids and cache entries are its own;
every generation names its tenant, which keys the language service's session KV.

A session's history images are sent by id, so the vision service reads their bytes from the
cache. When the cache has evicted them (NOT_FOUND), ``prepare`` asks ``recall`` (the session's
kept copies in the state role, ``gateway.session_images``) and encodes once more with the
bytes; the encoded conversation keeps them, so the inline retry above has them too.

Sampling goes downstream as the client sent it: an unset ``max_new_tokens`` stays 0, so the
language service fits it to the context the prompt leaves (within its own default cap). Filling
a default here would make long sessions fail once prompt + default exceeds the context.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from gateway.deadline import Deadline
from gateway.downstream import Downstream
from gateway.media_guard import MediaGuard
from gateway.messages import Chunk, ImageInput, ImageRef, ImageSource, Message, ModelInfo, Part, Sampling
from tandem.errors import InvalidInput, NotFound, Unavailable

log = logging.getLogger(__name__)

TEXT_ONLY_MESSAGE = "this model is text-only; remove the image parts"
Recall = Callable[[Sequence[str]], Awaitable[dict[str, bytes]]]  # image ids -> kept bytes


@dataclass(frozen=True)
class Encoded:
    """A conversation ready for the language service."""

    messages: tuple[Message, ...]
    inputs: tuple[ImageInput, ...]
    new_image_ids: tuple[str, ...]
    new_image_bytes: tuple[int, ...] = ()  # sizes of the new images sent as bytes (0: named by id)
    scope: str = ""  # the vision service's key scope (``--cache-scope tenant``)
    recall: Recall | None = field(default=None, repr=False, compare=False)  # kept session images

    def new_images(self) -> list[tuple[str, int]]:
        """(image id, bytes) of the images this request sent as bytes."""
        return [(i, n) for i, n in zip(self.new_image_ids, self.new_image_bytes, strict=True) if n]

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

    def __init__(self, guard: MediaGuard, downstream: Downstream, tenant_scoped: bool = False):
        self.guard = guard
        self.downstream = downstream
        self.tenant_scoped = tenant_scoped  # image keys salted per tenant (--cache-scope tenant)
        self.model: ModelInfo | None = None

    def require_model(self) -> ModelInfo:
        if self.model is None:
            raise Unavailable("the gateway is still starting; retry shortly")
        return self.model

    async def prepare(
        self,
        conversation: Sequence[Message],
        deadline: Deadline,
        tenant: str = "",
        recall: Recall | None = None,
    ) -> Encoded:
        """Resolve and encode every image of ``conversation`` (for ``tenant``'s key scope);
        ``recall`` gives the kept bytes of history images the cache lost (module docstring)."""
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
        encoded = Encoded(placeholders, inputs, (), scope=tenant if self.tenant_scoped else "", recall=recall)
        if not inputs:
            return encoded
        inputs, refs = await self._encode(encoded, False, deadline)
        new = [
            (r.image_id, len(i.data or b""))
            for r, i, img in zip(refs, inputs, images, strict=True)
            if isinstance(img, ImageSource)
        ]
        return replace(
            encoded.with_refs(refs),
            inputs=inputs,
            new_image_ids=tuple(i for i, _ in new),
            new_image_bytes=tuple(n for _, n in new),
        )

    async def stream(
        self,
        encoded: Encoded,
        sampling: Sampling,
        request_id: str,
        session_id: str,
        deadline: Deadline,
        tenant: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        """The answer's chunks; the first carries ``encoded.new_image_ids``."""
        produced = False
        for attempt in range(2):
            try:
                generation = self.downstream.generate(
                    encoded.messages, sampling, request_id, session_id, deadline, tenant=tenant
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
                inputs, refs = await self._encode(encoded, True, deadline)
                encoded = replace(encoded.with_refs(refs), inputs=inputs)

    async def _encode(
        self, encoded: Encoded, force_inline: bool, deadline: Deadline
    ) -> tuple[tuple[ImageInput, ...], list[ImageRef]]:
        """One Encode of ``encoded.inputs``; on NOT_FOUND, once more with the kept bytes of the
        images sent by id (``encoded.recall``). The inputs sent last, and their refs."""
        inputs = encoded.inputs
        try:
            return inputs, await self.downstream.encode(inputs, force_inline, deadline, encoded.scope)
        except NotFound as lost:
            inputs = await _recalled(inputs, encoded.recall, lost)
        return inputs, await self.downstream.encode(inputs, force_inline, deadline, encoded.scope)


async def _recalled(
    inputs: tuple[ImageInput, ...], recall: Recall | None, lost: NotFound
) -> tuple[ImageInput, ...]:
    """``inputs`` with each image sent by id replaced by its kept bytes; raises ``lost`` (the
    vision service's ``NotFound``) when none is kept."""
    named = [i.image_id for i in inputs if i.data is None and i.image_id]
    kept = await recall(named) if recall is not None and named else {}
    if not kept:
        raise lost
    log.info("re-encoding %d session images from their kept bytes", len(kept))
    return tuple(_with_kept(i, kept) for i in inputs)


def _with_kept(image: ImageInput, kept: dict[str, bytes]) -> ImageInput:
    """``image`` with its kept bytes in place of its id (itself when it has none kept)."""
    data = kept.get(image.image_id or "") if image.data is None else None
    return ImageInput(data=data) if data else image


def _placeholder(part: Part) -> Part:
    """Keep text; image parts are replaced by their encoded refs in ``with_refs``."""
    return part if isinstance(part, str) else ImageRef("")
