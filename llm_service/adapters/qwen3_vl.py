"""Qwen3-VL (Qwen3VLForConditionalGeneration): a Qwen3 decoder with interleaved M-RoPE and deepstack.

Prompt and positions are Qwen2-VL's (``qwen2_vl.py``): ``<|vision_start|><|image_pad|><|vision_end|>``
per image, ``<|image_pad|>`` expanded to ``t*h*w / merge**2`` rows, and for still images
transformers' ``Qwen3VLModel.get_rope_index`` gives Qwen2-VL's three position rows (the decoder
interleaves their frequencies itself). The decoder sits at ``model.language_model.``.

What else decides the answer: each image's record carries ``"deepstack"`` [K, num_tokens, H],
the features of K vision blocks; during prefill set k is added to the output of decoder layer k
at that image's rows (HF's ``deepstack_visual_embeds`` with ``visual_pos_masks``). ``layer_inputs``
lays them out per prompt row, zeros at text rows; adding zero leaves a text row exactly as HF
has it, so a prefill chunk may end anywhere, and a text-only request needs none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from llm_service.adapters.base import PromptLayout
from llm_service.adapters.qwen2_vl import Qwen2VLAdapter
from tandem.embeddings.cache import Embedding
from tandem.errors import InvalidInput

DEEPSTACK = "deepstack"


class Qwen3VLAdapter(Qwen2VLAdapter):
    architectures = ("Qwen3VLForConditionalGeneration",)
    weight_prefixes: ClassVar[dict[str, str]] = {"model.language_model.": "model.", "lm_head.": "lm_head."}
    extras: ClassVar[tuple[str, ...]] = (DEEPSTACK,)

    @property
    def deepstack_layers(self) -> int:
        """K: how many decoder layers (0..K-1) get deepstack features."""
        return len(self.config.vision_config.deepstack_visual_indexes)

    def layer_inputs(self, layout: PromptLayout, embeddings: Sequence[Embedding]) -> torch.Tensor | None:
        if not layout.spans:
            return None
        hidden = int(self.text_config.hidden_size)
        out: torch.Tensor | None = None
        for span, embedding in zip(layout.spans, embeddings, strict=True):
            layers = embedding.extras.get(DEEPSTACK)
            want = (self.deepstack_layers, span.image.num_tokens, hidden)
            if layers is None or tuple(layers.shape) != want:
                got = list(layers.shape) if layers is not None else "missing"
                raise InvalidInput(
                    f"image {span.image.image_id[:12]}: deepstack features {got}, expected {list(want)}"
                )
            if out is None:
                out = layers.new_zeros(len(layout.token_ids), self.deepstack_layers, hidden)
            out[span.start : span.end] = layers.transpose(0, 1)
        return out

    def dummy_extras(self, num_tokens: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        hidden = int(self.text_config.hidden_size)
        return {DEEPSTACK: torch.zeros(self.deepstack_layers, num_tokens, hidden, dtype=dtype)}
