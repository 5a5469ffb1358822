"""Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration): Qwen2-VL's prompt layout and M-RoPE for images.

For still images transformers' ``Qwen2_5_VLModel.get_rope_index`` is Qwen2-VL's rule: the
temporal rows are scaled by ``tokens_per_second * second_per_grid_ts`` for videos only, and an
image's time interval is 1. The decoder's checkpoint layouts are Qwen2-VL's too.
"""

from __future__ import annotations

from llm_service.adapters.qwen2_vl import Qwen2VLAdapter


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
