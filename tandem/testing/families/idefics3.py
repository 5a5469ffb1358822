"""The ``"idefics3"`` tiny checkpoint: the ``"smolvlm"`` kind's model, tokenizer and template in
Idefics3's classes (``Idefics3ForConditionalGeneration``, ``Idefics3Processor``), so the same
images give the same tile grids and token counts (``tandem/testing/families/smolvlm.py``).
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
)

from tandem.testing.checkpoints import _save
from tandem.testing.families.smolvlm import IMAGE_SEQ_LEN, SMOLVLM_TEMPLATE, image_sizes, parts


def build(path: Path) -> None:
    """Write the tiny Idefics3 checkpoint (model, generation config, processor) to ``path``."""
    tok, config = parts(Idefics3Config)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**image_sizes()), tokenizer=tok, image_seq_len=IMAGE_SEQ_LEN,
        chat_template=SMOLVLM_TEMPLATE,
    )  # fmt: skip
    _save(Idefics3ForConditionalGeneration(config), processor, path, tok.eos_token_id)
