"""Tandem's default model: a tiny LLaVA trained on synthetic shapes, served by ``tandem up``.

It answers short questions about pictures of coloured shapes -- "What shape is this?",
"What colour is the square?", "How many shapes are there?", "Where is the star?", "Describe the
image.", "Which image has the red square, the first or the second?" -- and follow-up questions
about an image sent in an earlier turn. ``CHECKPOINT`` is the trained checkpoint shipped in the
package (a normal Hugging Face folder: config, float16 safetensors, tokenizer, processor, chat
template, generation config). The code that trains and scores it is a recipe outside the
package: ``python -m recipes.default_model.train`` / ``.evaluate`` from a checkout.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"

__all__ = ["CHECKPOINT"]
