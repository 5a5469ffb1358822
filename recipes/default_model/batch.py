"""Samples -> model inputs, tokenised exactly as ``LlavaProcessor`` would (loss on answers only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from recipes.default_model.data import Message, Sample
from recipes.default_model.scenes import Scene, patch_labels

IGNORE = -100


@dataclass(frozen=True)
class Batch:
    """Right-padded training inputs; ``labels`` is ``IGNORE`` except on assistant answers and their ``</s>``.

    ``patch_shapes`` / ``patch_colours`` ([images, patches]) label what each image patch shows
    (``data.patch_labels``), for the auxiliary vision loss.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    patch_shapes: torch.Tensor
    patch_colours: torch.Tensor

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
            "pixel_values": self.pixel_values,
        }


class Encoder:
    """Renders chats with the processor's template and expands each ``<image>`` to its tokens.

    The chat is rendered once per assistant turn (prefix lengths in characters) and tokenised
    once; a token is a target when it starts inside an answer (the text after ``ASSISTANT:`` up
    to and including ``</s>``).
    """

    def __init__(self, processor: Any):
        self._images = processor.image_processor
        self._grid = processor.image_processor.crop_size["height"] // processor.patch_size
        self._tokenizer = processor.tokenizer
        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
            processor.chat_template
        )
        self._image_id = int(self._tokenizer.convert_tokens_to_ids(processor.image_token))
        self._image_tokens = _image_tokens(processor)

    def _render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt)

    def encode(self, sample: Sample) -> tuple[list[int], list[int]]:
        """(input ids, labels) of the whole chat: ``<s>`` first, images expanded, as the processor does."""
        messages = sample.messages
        spans = [
            (
                len(self._render(messages[:i], add_generation_prompt=True)),
                len(self._render(messages[: i + 1])),
            )
            for i, message in enumerate(messages)
            if message["role"] == "assistant"
        ]
        encoding = self._tokenizer(self._render(messages), return_offsets_mapping=True)
        ids: list[int] = []
        labels: list[int] = []
        for token, (start, _) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
            target = any(begin <= start < end for begin, end in spans) and token != self._image_id
            count = self._image_tokens if token == self._image_id else 1
            ids += [token] * count
            labels += [token if target else IGNORE] * count
        return ids, labels

    def collate(
        self, samples: Sequence[Sample], encoded: Sequence[tuple[list[int], list[int]]] | None = None
    ) -> Batch:
        """Pad to the longest chat; images of all samples in order, as the placeholders appear.

        ``encoded`` is ``[self.encode(s) for s in samples]`` when the caller has it already.
        """
        if encoded is None:
            encoded = [self.encode(sample) for sample in samples]
        width = max(len(ids) for ids, _ in encoded)
        pad = int(self._tokenizer.pad_token_id)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, target) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(target)
            mask[row, : len(ids)] = 1
        images = [image for sample in samples for image in sample.images]
        scenes = [scene for sample in samples for scene in sample.scenes]
        return Batch(input_ids, mask, labels, *self.pictures(scenes, images))

    def pictures(
        self, scenes: Sequence[Scene], images: Sequence[Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixel values, patch shape labels, patch colour labels) of drawn ``scenes``."""
        pixels = self._images(list(images), return_tensors="pt")["pixel_values"]
        shapes, colours = zip(*(patch_labels(scene, self._grid) for scene in scenes), strict=True)
        return pixels, torch.tensor(shapes), torch.tensor(colours)


def _image_tokens(processor: Any) -> int:
    size = processor.image_processor.crop_size["height"]
    return int((size // processor.patch_size) ** 2 + processor.num_additional_image_tokens) - (
        1 if processor.vision_feature_select_strategy == "default" else 0
    )
