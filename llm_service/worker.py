"""The language worker: conversation in, engine request built, token events out.

``LanguageWorker.generate`` is the one domain call of GenerateTokens:

1. render and tokenise the conversation (``PromptBuilder``; injection-safe) and let the adapter
   expand each image placeholder to the image's token count -- refused before any cache read
   when placeholders and images disagree;
2. fetch and validate the image embeddings (``FeatureSource``: inline or Redis; NOT_FOUND if
   missing), take each image's grid from its record;
3. let the adapter check the images and compute positions; embed the tokens and put the image
   features in the placeholder rows;
4. stream the engine's events, within the caller's deadline; leaving early (cancel, deadline,
   disconnect) cancels the engine request.

CPU work of steps 1 and 3 runs in a helper thread, so the event loop only does I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import cast

import torch

from llm_service.adapters import Adapter, ImageSpan, PromptLayout
from llm_service.conversation import ChatMessage, GenerationRequest, ImageRef, Part, TextPart, all_images
from llm_service.engine import EngineRequest, SamplingConfig, TokenEvent
from llm_service.engine.types import PromptImage, TokenEngine
from llm_service.features import FeatureSource
from llm_service.model import HFLanguageModel
from llm_service.prompt import PromptBuilder
from tandem.embeddings import record
from tandem.embeddings.cache import Embedding
from tandem.errors import DeadlineExceeded, InvalidInput
from tandem.wire.types import ModelInfo as ModelInfo  # what GetLanguageInfo reports

log = logging.getLogger(__name__)

IMAGE_KEY_BITS = 96  # of the sha256 image id: collisions stay out of reach of a chosen-image search
# No tokenizer averages this many characters per token: longer text cannot fit the context, and is
# refused before it costs a render and a tokenisation.
MAX_CHARS_PER_TOKEN = 256
INLINE_PROMPT_CHARS = 2048  # a text-only prompt up to this is prepared on the event loop


def image_key(image_id: str, offset: int) -> int:
    """The prompt key of an image row: negative, from (image_id, offset), never a token id.

    The prefix cache keys image positions by these: the same image at the same place hits.
    """
    return -1 - ((int(image_id[: IMAGE_KEY_BITS // 4], 16) << 16) | offset)


def session_key(tenant: str, session_id: str | None) -> str | None:
    """The engine's name of a session: (tenant, session), unique across tenants (the engine's KV
    reuse is scoped by ``EngineRequest.tenant`` itself)."""
    return None if session_id is None else f"{tenant}/{session_id}"


def prompt_keys(layout: PromptLayout) -> list[int]:
    keys = list(layout.token_ids)
    for span in layout.spans:
        for offset, row in enumerate(span.feature_rows, start=span.record_offset):
            keys[row] = image_key(span.image.image_id, offset)
    return keys


@dataclasses.dataclass(eq=False, repr=False)
class LanguageWorker:
    """Builds engine requests from conversations and streams their tokens (see the module doc).

    Holds the loaded parts (built by ``llm_service.server.build_worker``); the engine is started
    and stopped by the app that owns the worker. Without a ``model`` (``--engine vllm``) the
    engine embeds the prompt itself: requests carry token ids and ``images``, no embeddings.
    """

    model: HFLanguageModel | None
    adapter: Adapter
    prompts: PromptBuilder
    features: FeatureSource
    engine: TokenEngine
    info: ModelInfo

    async def generate(
        self, request: GenerationRequest, timeout: float | None = None
    ) -> AsyncIterator[TokenEvent]:
        """Stream the answer to ``request``; ``timeout`` seconds bound the whole call."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                engine_request = await self.prepare(request)
            stream = cast(AsyncGenerator[TokenEvent, None], self.engine.generate(engine_request))
            async with contextlib.aclosing(stream):
                while True:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(stream, None)
                    if event is None:
                        return
                    yield event
        except TimeoutError:
            raise DeadlineExceeded("the deadline passed before generation finished") from None

    def release_session(self, tenant: str, session_id: str) -> None:
        """A session was deleted: nothing to drop here. Its turns' KV sits in the engine's prefix
        cache, content-addressed and scoped to the tenant, possibly shared with the tenant's other
        requests; it leaves by LRU eviction (llm_service/engine/README.md, "Prefix cache")."""

    async def warmup(self) -> None:
        """Warm the engine, then run one tiny request through the whole path (an image for VLMs)."""
        await asyncio.to_thread(self.engine.warmup)
        parts: list[Part] = [TextPart("Hello")]
        if self.adapter.is_vlm:
            parts.insert(0, self._dummy_image())
        request = GenerationRequest(
            "warmup", (ChatMessage("user", tuple(parts)),), SamplingConfig(max_new_tokens=2)
        )
        async for _ in self.generate(request):
            pass

    def _dummy_image(self) -> ImageRef:
        image = self.adapter.dummy_image()
        dtype = self.model.dtype if self.model is not None else torch.float32
        features = torch.zeros(image.num_tokens, self.features.hidden_size, dtype=dtype)
        header, raw = record.make_header(
            fingerprint=self.features.fingerprint,
            image_id=image.image_id,
            tensor=features,
            grid_thw=list(image.grid_thw),
            extras=self.adapter.dummy_extras(image.num_tokens, dtype),
        )
        return dataclasses.replace(image, inline_record=record.encode(header, raw))

    async def prepare(self, request: GenerationRequest) -> EngineRequest:
        """The engine request of a conversation (prompt, embeddings, positions, sampling)."""
        chars = self._check_text_size(request)
        images = all_images(request.messages)
        # A short text-only prompt is tokenized and embedded in well under a millisecond: on the
        # loop, as two thread hand-offs would cost more; anything larger runs off it.
        inline = not images and chars <= INLINE_PROMPT_CHARS
        image_tokens = sum(image.num_tokens for image in images)
        if image_tokens >= self.info.context_length:
            raise InvalidInput(
                f"the images take {image_tokens} tokens; the context length is {self.info.context_length}"
            )
        layout = (
            self._layout(request, images)
            if inline
            else await asyncio.to_thread(self._layout, request, images)
        )
        embeddings = await self.features.fetch(images)
        spans = [
            _with_grid(span, embedding) for span, embedding in zip(layout.spans, embeddings, strict=True)
        ]
        layout = dataclasses.replace(layout, spans=spans)
        for span in spans:
            self.adapter.check_image(span)
        sampling = self._fit_sampling(request, len(layout.token_ids))
        log.debug(
            "request %s: %d prompt tokens (%d from %d images), max_new_tokens %d",
            request.request_id, len(layout.token_ids), image_tokens, len(images), sampling.max_new_tokens,
        )  # fmt: skip
        if inline:
            return self._assemble(request, layout, embeddings, sampling)
        return await asyncio.to_thread(self._assemble, request, layout, embeddings, sampling)

    def _check_text_size(self, request: GenerationRequest) -> int:
        """The characters of text in ``request``; ``InvalidInput`` when far too many."""
        chars = sum(len(p.text) for m in request.messages for p in m.parts if isinstance(p, TextPart))
        if chars > MAX_CHARS_PER_TOKEN * self.info.context_length:
            raise InvalidInput(
                f"the messages hold {chars} characters of text, far more than the context length "
                f"({self.info.context_length} tokens) can take"
            )
        return chars

    def _layout(self, request: GenerationRequest, images: Sequence[ImageRef]) -> PromptLayout:
        return self.adapter.layout(self.prompts.build(request.messages), images)

    def _fit_sampling(self, request: GenerationRequest, prompt_tokens: int) -> SamplingConfig:
        room = self.info.context_length - prompt_tokens
        if room < 1:
            raise InvalidInput(
                f"the prompt has {prompt_tokens} tokens; the context length is {self.info.context_length}; "
                "shorten the conversation (for a long chat session, start a new session)"
            )
        sampling = request.sampling
        if request.clamp_to_context and sampling.max_new_tokens > room:
            sampling = dataclasses.replace(sampling, max_new_tokens=room)
        return sampling

    def _assemble(
        self,
        request: GenerationRequest,
        layout: PromptLayout,
        embeddings: Sequence[Embedding],
        sampling: SamplingConfig,
    ) -> EngineRequest:
        embeds = self._embed(layout, embeddings)
        positions, next_position = self.adapter.positions(layout)
        return EngineRequest(
            request_id=request.request_id,
            prompt_keys=prompt_keys(layout),
            prompt_token_ids=layout.token_ids,
            inputs_embeds=embeds,
            position_ids=positions,
            next_position=next_position,
            sampling=sampling,
            image_tokens=layout.image_tokens,
            attention_blocks=self.adapter.attention_blocks(layout),
            layer_inputs=self.adapter.layer_inputs(layout, embeddings),
            session_id=session_key(request.tenant, request.session_id),
            tenant=request.tenant,
            images=tuple(
                PromptImage(
                    span.start, span.image.image_id, embedding.features[span.record_rows], span.grid_thw
                )
                for span, embedding in zip(layout.spans, embeddings, strict=True)
            ),
        )

    def _embed(self, layout: PromptLayout, embeddings: Sequence[Embedding]) -> torch.Tensor:
        """The prompt's embeddings [L, H]: tokens, image features in their rows (empty: no model)."""
        if self.model is None:
            return torch.empty(0)
        embeds = self.model.embed(torch.tensor(layout.token_ids, dtype=torch.long))
        for span, embedding in zip(layout.spans, embeddings, strict=True):
            rows = torch.as_tensor(span.feature_rows, dtype=torch.long, device=embeds.device)
            embeds[rows] = embedding.features[span.record_rows].to(embeds.device, embeds.dtype)
        return embeds


def _with_grid(span: ImageSpan, embedding: Embedding) -> ImageSpan:
    """The span with the grid of its record (the reference's grid, if any, must agree)."""
    stored = tuple(embedding.grid_thw)
    if span.grid_thw and stored and tuple(span.grid_thw) != stored:
        raise InvalidInput(
            f"image {span.image.image_id[:12]}: grid {list(span.grid_thw)} disagrees with its embedding"
        )
    return dataclasses.replace(span, grid_thw=stored or tuple(span.grid_thw))
