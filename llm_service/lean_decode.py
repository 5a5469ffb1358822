"""A decode step of a Llama-shaped decoder without transformers' per-call machinery.

A batch-1 decode step of a small model on a CPU is partly Python: besides its matmuls, each layer
goes through decorators, keyword plumbing, output capturing, the attention-interface lookup, and
the mask is built again for every step. ``LeanDecoder`` runs the layers' own modules (norms,
projections, rotary embedding, cache) in one plain loop and restates the rest as those layers
compute it (rotary application; sdpa called as transformers calls it for one query position;
releases without ``pack_gqa`` have their own sdpa function called), with the step's mask built
once: the logits are bit for bit the transformers forward's (tests/unit/llm_service/
test_lean_decode.py, under transformers 5.24 and 5.19).

It covers the decoder layers whose forward it restates (``LAYERS``: Llama, Mistral, Qwen2, the
language half of LLaVA, LLaVA-NeXT/OneVision, SmolVLM/Idefics3 and InternVL checkpoints, and
Qwen2-VL's and Qwen2.5-VL's text decoders), on a CPU, with sdpa attention, and decode steps
only: every row one new position, no sliding window in reach. Anything else (prefill, other
families, a step a window could cut) runs the transformers forward. Measured on this project's
2-core machine (SmolLM2-135M-shaped Llama, 230 cached positions, steps of the two paths
interleaved): 0.90-0.95x the step time at 1 and 4 rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations import sdpa_attention
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

# (decoder layer, its attention, its MLP) class names, by transformers module.
LAYERS = {
    "transformers.models.llama.modeling_llama": ("LlamaDecoderLayer", "LlamaAttention", "LlamaMLP"),
    "transformers.models.mistral.modeling_mistral": (
        "MistralDecoderLayer",
        "MistralAttention",
        "MistralMLP",
    ),
    "transformers.models.qwen2.modeling_qwen2": ("Qwen2DecoderLayer", "Qwen2Attention", "Qwen2MLP"),
    # Qwen2-VL's and Qwen2.5-VL's text decoders: Qwen2's layers; their rotary embedding turns the
    # M-RoPE position rows into one cos/sin, which both paths ask it for.
    "transformers.models.qwen2_vl.modeling_qwen2_vl": ("Qwen2VLDecoderLayer", "Qwen2VLAttention", "Qwen2MLP"),
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl": (
        "Qwen2_5_VLDecoderLayer",
        "Qwen2_5_VLAttention",
        "Qwen2MLP",
    ),
}
PATHS = ("lean", "hf")


def unsupported(decoder: nn.Module, config: Any, device: torch.device) -> str | None:
    """None when ``LeanDecoder`` can run ``decoder``'s decode steps, else why not."""
    if device.type != "cpu":
        return f"the model runs on {device.type}"
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attention is {getattr(config, '_attn_implementation', None)!r}, not sdpa"
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) != int(config.num_hidden_layers):
        return "the decoder has no plain list of layers"
    if not all(hasattr(decoder, name) for name in ("rotary_emb", "norm")):
        return "the decoder has no rotary embedding or final norm"
    for layer in layers:
        names = LAYERS.get(type(layer).__module__)
        found = (type(layer).__name__, type(layer.self_attn).__name__, type(layer.mlp).__name__)
        if names is None or found != names:
            return f"{type(layer).__name__} is not a decoder layer it restates"
    return None


class LeanDecoder:
    """``decoder``'s forward for a decode step (every row one position), returning the final hidden
    states [B, 1, H]; ``step_supported`` says whether a given step may take it."""

    def __init__(self, decoder: nn.Module, config: Any) -> None:
        self.decoder = decoder
        self.layers = list(decoder.layers)  # type: ignore[arg-type]
        # ``_attention`` restates the sdpa function of transformers releases that pack grouped
        # heads for one query position (``pack_gqa``); older ones get their own function called.
        self.restated = hasattr(sdpa_attention, "pack_gqa")
        self.sdpa: Any = ALL_ATTENTION_FUNCTIONS["sdpa"]
        windows = [_window(layer.self_attn, config) for layer in self.layers]
        self.window = min((w for w in windows if w is not None), default=None)

    def step_supported(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any,
    ) -> bool:
        """A decode step over a cache the mask covers, which no sliding window could cut, with
        positions [B, 1] or M-RoPE's [3, B, 1] (not the packed [4, B, 1] the Qwen2-VL decoder
        splits first)."""
        width = attention_mask.shape[-1]
        return (
            inputs_embeds.shape[1] == 1
            and (position_ids.dim() == 2 or (position_ids.dim() == 3 and position_ids.shape[0] == 3))
            and attention_mask.dim() == 2
            and (self.window is None or width <= self.window)
            and cache is not None
            and cache.get_seq_length() + 1 == width
        )

    def __call__(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        hidden = inputs_embeds
        rotary: Any = self.decoder.rotary_emb
        cos, sin = rotary(hidden, position_ids=position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # over the heads
        # What transformers' mask builder hands sdpa at a decode step: nothing when every column
        # is real, else which columns each row attends ([B, 1, 1, W]; padding is False).
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
        batch = hidden.shape[0]
        for index, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            residual = hidden
            hidden = layer.input_layernorm(hidden)
            shape = (batch, 1, -1, attn.head_dim)
            query = _rotated(attn.q_proj(hidden).view(shape).transpose(1, 2), cos, sin)
            key = _rotated(attn.k_proj(hidden).view(shape).transpose(1, 2), cos, sin)
            value = attn.v_proj(hidden).view(shape).transpose(1, 2)
            key, value = cache.update(key, value, index)
            if self.restated:
                out = _attention(query, key, value, mask, attn.scaling, attn.num_key_value_groups)
            else:
                out = self.sdpa(attn, query, key, value, mask, dropout=0.0, scaling=attn.scaling)[0]
                out = out.reshape(batch, 1, -1).contiguous()
            hidden = residual + attn.o_proj(out)
            residual = hidden
            hidden = layer.post_attention_layernorm(hidden)
            hidden = residual + mlp.down_proj(mlp.act_fn(mlp.gate_proj(hidden)) * mlp.up_proj(hidden))
        norm: Any = self.decoder.norm
        return norm(hidden)  # type: ignore[no-any-return]


def _rotated(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rotary_pos_emb`` of these modules, for one tensor: x cos + rotate_half(x) sin."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def _attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    groups: int,
) -> torch.Tensor:
    """transformers' sdpa attention for one query position, as it calls torch for it (grouped
    heads through ``enable_gqa`` without a mask, packed into the query rows with one), returned
    as [B, 1, heads * dim] for the output projection."""
    batch, dim = query.shape[0], value.shape[-1]
    kwargs = {}
    if groups > 1:
        if mask is None and key.shape[-1] == dim <= 256:
            kwargs["enable_gqa"] = True
        else:
            query = query.reshape(batch, query.shape[1] // groups, groups, query.shape[-1])
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=0.0, scale=scaling, is_causal=False, **kwargs
    )
    return out.reshape(out.shape[0], -1, 1, dim).transpose(1, 2).reshape(batch, 1, -1)


def _window(attn: nn.Module, config: Any) -> int | None:
    """The sliding window ``attn`` passes to its attention function (Qwen2 per layer type,
    Mistral from the config), or None."""
    if hasattr(attn, "sliding_window"):
        window: Any = attn.sliding_window
        return None if window is None else int(window)
    if type(attn).__name__ == "MistralAttention":
        return getattr(config, "sliding_window", None)
    return None
