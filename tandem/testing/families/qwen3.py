"""The ``"qwen3"`` tiny checkpoint (see ``text_decoders``)."""

from tandem.testing.families.text_decoders import build_qwen3 as build

__all__ = ["build"]
