"""The ``"mistral"`` tiny checkpoint (see ``text_decoders``)."""

from tandem.testing.families.text_decoders import build_mistral as build

__all__ = ["build"]
