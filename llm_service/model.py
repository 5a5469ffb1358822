"""The language half of a checkpoint as the engine drives it (``LanguageModel``).

``CausalLM`` is the decoder (``model.``: embeddings, layers, final norm) and the LM head
(``lm_head.``), the layout every adapter maps its checkpoint tensors onto. ``HFLanguageModel``
wraps it with the engine's calls; the engine thread runs ``forward``, the event loop's helper
threads run ``embed`` (a read-only table lookup).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from llm_service.lean_decode import LeanDecoder, unsupported
from llm_service.masks import block_masks
from tandem.models.packed_linear import packed_parameter_count


class CausalLM(nn.Module):
    """A transformers decoder (``AutoModel`` of the text config) plus a linear LM head."""

    def __init__(
        self,
        decoder: nn.Module,
        hidden_size: int,
        vocab_size: int,
        tied: bool = False,
        head_bias: bool = False,
    ):
        super().__init__()
        self.model = decoder
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=head_bias)
        # Read by ``load_subset``: a tied head is not expected in the checkpoint.
        self._tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"} if tied else {}

    @property
    def embeddings(self) -> nn.Embedding:
        """The decoder's input embedding table."""
        table = self.model.get_input_embeddings()  # type: ignore[operator]
        if not isinstance(table, nn.Embedding):
            raise TypeError(f"unexpected input embeddings {type(table).__name__}")
        return table


class HFLanguageModel:
    """``llm_service.engine.types.LanguageModel`` over a loaded ``CausalLM``.

    ``forward`` returns float32 logits of the last position (as ``generate`` samples from, with
    the config's ``final_logit_softcapping`` applied as its ``*ForCausalLM`` does) and the cache
    it was given (a new one when given None); the cache is updated in place.

    Prefill embeddings wider than the hidden size carry per-layer additions after the hidden
    columns (``EngineRequest.layer_inputs``): K more blocks of H columns, block k added to the
    output of decoder layer k. A decoder takes them when its forward has transformers' deepstack
    arguments (``deepstack_visual_embeds``, ``visual_pos_masks``: Qwen3-VL's text model); every
    row gets its addition, which is zero at text and padding rows, so the result is HF's, where
    only image rows are touched.
    """

    def __init__(self, module: CausalLM, text_config: Any, position_dims: int, decode_path: str = "lean"):
        self.module = module
        self.text_config = text_config
        self.position_dims = position_dims
        weight = module.lm_head.weight
        self.dtype: torch.dtype = weight.dtype
        self.device: torch.device = weight.device
        self.hidden_size = int(text_config.hidden_size)
        self.vocab_size = int(weight.shape[0])
        parameters = inspect.signature(module.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self._softcap = float(getattr(text_config, "final_logit_softcapping", None) or 0.0)
        self.takes_layer_inputs = "deepstack_visual_embeds" in parameters and "visual_pos_masks" in parameters
        # Decode steps skip transformers' per-call machinery where lean_decode.py restates the layers.
        self.lean: LeanDecoder | None = None
        why: str | None = "--decode-path hf"
        if decode_path == "lean":
            why = unsupported(module.model, text_config, self.device)
        if why is None:
            self.lean = LeanDecoder(module.model, text_config)
        self.lean_unsupported = why

    @torch.no_grad()
    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.module.embeddings(token_ids.to(self.device))

    @torch.no_grad()
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values: Any | None,
        blocks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        cache = past_key_values if past_key_values is not None else self.new_cache()
        inputs_embeds, position_ids = inputs_embeds.to(self.device, self.dtype), position_ids.to(self.device)
        mask: Any = attention_mask.to(self.device)
        inputs_embeds, extra = self._layer_inputs(inputs_embeds)
        lean = self.lean
        plain = blocks is None and not extra
        if lean is not None and plain and lean.step_supported(inputs_embeds, position_ids, mask, cache):
            return self._logits(lean(inputs_embeds, position_ids, mask, cache)), cache
        if blocks is not None:
            mask = block_masks(
                self.text_config, inputs_embeds, position_ids, mask, cache, blocks.to(self.device)
            )
        out = self.module.model(
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            attention_mask=mask,
            use_cache=True,
            **{self._cache_kwarg: cache},
            **extra,
        )
        return self._logits(out.last_hidden_state), cache

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits of the last position of ``hidden`` [B, L, H]."""
        logits = self.module.lm_head(hidden[:, -1, :])
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits.float()

    def _layer_inputs(self, packed: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The embeddings [B, L, H] and the decoder arguments of the per-layer additions packed
        after them (see the class docstring); no arguments when there are none."""
        if packed.shape[-1] == self.hidden_size:
            return packed, {}
        if not self.takes_layer_inputs or packed.shape[-1] % self.hidden_size:
            raise ValueError(
                f"inputs_embeds of width {packed.shape[-1]}; the hidden size is {self.hidden_size}"
            )
        embeds, layers = packed[..., : self.hidden_size].contiguous(), packed[..., self.hidden_size :]
        rows = torch.ones(packed.shape[:2], dtype=torch.bool, device=packed.device)
        per_layer = layers.reshape(-1, layers.shape[-1] // self.hidden_size, self.hidden_size).unbind(1)
        return embeds, {"visual_pos_masks": rows, "deepstack_visual_embeds": list(per_layer)}

    def new_cache(self) -> DynamicCache:
        """Full-length layers throughout: sliding-window layers keep every position too (the
        engine pads, batches and slices caches by column), their window is applied by the mask."""
        cache = DynamicCache(config=self.text_config)
        cache.layers = [
            DynamicLayer() if isinstance(layer, DynamicSlidingWindowLayer) else layer
            for layer in cache.layers
        ]
        return cache

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters()) + packed_parameter_count(self.module)
