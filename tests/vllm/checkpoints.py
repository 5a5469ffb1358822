"""Tiny checkpoints that vLLM's CPU build runs: Tandem's, with heads of 32 dimensions.

vLLM's CPU attention takes head sizes 32..512; Tandem's tiny checkpoints have 4 heads of 16
(2 KV heads). The copy made here declares 2 heads of 32 (1 KV head) instead: every weight keeps
its shape and values, so both Hugging Face and vLLM load the copy as it is (a different, equally
random model). Qwen2-VL's M-RoPE sections are re-split for the wider head.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tandem.testing.checkpoints import ensure_checkpoint, mrope_section

HEADS, KV_HEADS, HEAD_DIM = 2, 1, 32


def vllm_checkpoint(kind: str, root: Path) -> Path:
    """``root/<kind>-vllm``: the tiny ``kind`` checkpoint with 32-wide heads (built once)."""
    target = root / f"{kind}-vllm"
    if (target / "config.json").exists():
        return target
    source = ensure_checkpoint(kind, root)
    tmp = root / f".{kind}-vllm.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    config_file = tmp / "config.json"
    config = json.loads(config_file.read_text())
    text = config.get("text_config", config)
    text |= {"num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM}
    rope = text.get("rope_parameters") or {}
    if "mrope_section" in rope:
        rope["mrope_section"] = mrope_section(HEAD_DIM)
    config_file.write_text(json.dumps(config, indent=2))
    tmp.rename(target)
    return target
