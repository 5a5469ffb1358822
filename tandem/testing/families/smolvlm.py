"""The ``"smolvlm"`` tiny checkpoint: SmolVLM (SigLIP-style tower, pixel shuffle, image tiles).

``SmolVLMForConditionalGeneration`` = a 2-layer SmolVLM vision tower (32 px frames, patch 8, so
4x4 patches) + the pixel-shuffle connector (``scale_factor`` 2: 2x2 neighbouring patches become
one token of 4x the width, then one linear map into the text hidden size, so 4 tokens per
frame) + a 2-layer Llama, with the real ``SmolVLMProcessor``. The image processor resizes an
image to a longest edge of ``LONGEST`` = 64 px, rounds both sides up to multiples of the
``TILE`` = 32 px frame, cuts that into rows x cols tiles and appends the whole image resized to
one frame (the global image). ``<image>`` becomes, per tile,
``<fake_token_around_image><row_r_col_c>`` + 4 ``<image>``, a newline after each row, then
``\\n<fake_token_around_image><global-img>`` + 4 ``<image>`` + ``<fake_token_around_image>``:
112x56 (width x height) gives 1x2 tiles, 12 image tokens; 84x112 and 140x140 2x2, 20.
Template and byte-level tokenizer in SmolVLM's style (``User:<image>...<end_of_utterance>\\n``,
``Assistant:``); generation stops at ``<end_of_utterance>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import pre_tokenizers
from transformers import (
    LlamaConfig,
    Qwen2Tokenizer,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
)

from tandem.testing.checkpoints import INIT_RANGE, TOKENIZER_KWARGS, _save, _text_config, _train_bpe

TILE, PATCH, SCALE, LONGEST = 32, 8, 2, 64
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2
ROW_COL = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
CONTROLS = ("<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>")
SPECIALS = (*CONTROLS, "<global-img>", *ROW_COL)
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def smol_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE (SmolLM2's kind) with SmolVLM's control and image tokens added."""
    backend = Qwen2Tokenizer().backend_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab, merges = _train_bpe(backend.pre_tokenizer, backend.normalizer, [], 600, alphabet)
    kwargs: dict[str, Any] = {"merges": merges, "unk_token": None, "pad_token": SPECIALS[0]}
    kwargs |= {"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>"}
    return Qwen2Tokenizer(vocab=vocab, extra_special_tokens=list(SPECIALS), **kwargs, **TOKENIZER_KWARGS)


def parts(config_class: Any) -> tuple[Qwen2Tokenizer, Any]:
    """The tokenizer and the model config of ``config_class`` (SmolVLM's or Idefics3's)."""
    tok = smol_tokenizer()
    tok.chat_template = SMOLVLM_TEMPLATE
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": TILE, "patch_size": PATCH, "initializer_range": INIT_RANGE,
    }  # fmt: skip
    config = config_class(
        vision_config=vision, text_config=LlamaConfig(**_text_config(tok)).to_dict(), scale_factor=SCALE,
        image_token_id=tok.convert_tokens_to_ids("<image>"), dtype="float32",
    )  # fmt: skip
    return tok, config


def image_sizes() -> dict[str, Any]:
    """The image processor's tiling settings (the ``"idefics3"`` kind uses them too)."""
    return {
        "size": {"longest_edge": LONGEST},
        "max_image_size": {"longest_edge": TILE},
        "do_image_splitting": True,
    }


def build(path: Path) -> None:
    """Write the tiny SmolVLM checkpoint (model, generation config, processor) to ``path``."""
    tok, config = parts(SmolVLMConfig)
    sizes = image_sizes()
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**sizes),
        video_processor=SmolVLMVideoProcessor(size=sizes["size"], max_image_size=sizes["max_image_size"]),
        tokenizer=tok, image_seq_len=IMAGE_SEQ_LEN, chat_template=SMOLVLM_TEMPLATE,
    )  # fmt: skip
    _save(SmolVLMForConditionalGeneration(config), processor, path, tok.eos_token_id)
