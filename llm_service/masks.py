"""Prefill attention masks where blocks of prompt positions attend to each other both ways.

Some families (Gemma 3) let the rows of one image see each other bidirectionally during prefill
while everything else stays causal. The engine describes that as ``blocks`` [B, past + L]: the
block number of each cached or new column (-1: none), aligned with the 2-D attention mask.
``block_masks`` turns it into the per-layer-type 4-D masks transformers decoders accept in place
of a 2-D ``attention_mask``, composed as HF composes them for such models:

- full attention layers: causal OR same block (then padding);
- sliding-window layers: (causal OR same block) AND within the window (then padding).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.masking_utils import blockwise_overlay, create_causal_mask, sliding_window_overlay


def block_masks(
    config: Any,
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: Any,
    blocks: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """``{"full_attention": mask, "sliding_attention": mask}`` for one forward (see the module doc)."""
    kwargs: dict[str, Any] = {
        "config": config,
        "inputs_embeds": inputs_embeds,
        "attention_mask": attention_mask,
        "cache": cache,
        "position_ids": position_ids,
        "or_mask_function": blockwise_overlay(blocks),
    }
    masks = {"full_attention": create_causal_mask(**kwargs)}
    window = getattr(config, "sliding_window", None)
    if window and "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        masks["sliding_attention"] = create_causal_mask(
            **kwargs, and_mask_function=sliding_window_overlay(window)
        )
    return masks
