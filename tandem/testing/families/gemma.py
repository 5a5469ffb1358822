"""The ``"gemma"`` tiny checkpoint (see ``text_decoders``)."""

from tandem.testing.families.text_decoders import build_gemma as build

__all__ = ["build"]
