"""Incremental detokenisation: the text each new token adds, never half a character."""

from __future__ import annotations

from typing import Any, Protocol

REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """The part of a Hugging Face tokenizer the detokenizer uses."""

    def decode(self, token_ids: Any, skip_special_tokens: bool = ..., **kwargs: Any) -> Any: ...


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas whose concatenation is the full decode.

    Each step decodes a short window ``ids[prefix:]`` and subtracts the decode of
    ``ids[prefix:read]`` (the TGI/vLLM prefix-offset scheme), so tokenizers that drop a leading
    space at the start of a decode (Metaspace) or need several byte tokens for one character
    (byte fallback, byte-level BPE) come out right. A delta ending in U+FFFD (an incomplete UTF-8
    sequence) is held back until the character completes, or until ``flush``.
    """

    def __init__(self, tokenizer: Decoder) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now complete (possibly "")."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return whatever is still held back (an incomplete character decodes to U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(prefix_text) and not final:
            return ""
        if text.endswith(REPLACEMENT) and not final:
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(prefix_text) :]
