"""Conversation -> prompt token ids, exactly as the checkpoint's processor would tokenise it.

Messages become Hugging Face chat messages (``{"role", "content": [{"type": "image"},
{"type": "text", "text": ...}]}``, or the joined text for a template that expects string
content, see ``chat_template.content_format``), rendered with the checkpoint's chat template
(``add_generation_prompt=True``) and tokenised with or without the tokenizer's special tokens as
the adapter says. That is byte for byte what ``processor.apply_chat_template`` produces (the
parity tests hold us to it).

Injection safety: message text must never become a control token (an image placeholder, a
role marker, an end-of-turn). Each text part has every added-token string broken up by a
zero-width space before templating, so it tokenises as plain text; then the control tokens of
the prompt are counted against a skeleton render of the same conversation (every text part
replaced by a neutral letter) and any surplus -- e.g. two text parts that the template joins
into ``<|image_pad|>`` -- is refused. Text without added-token strings is left untouched.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jinja2

from llm_service.chat_template import ContentFormat, content_format
from llm_service.conversation import ChatMessage, ImageRef, TextPart
from tandem.errors import InvalidInput

BREAK = "\u200b"  # zero-width space
SKELETON_TEXT = "a"


def control_tokens(tokenizer: Any) -> dict[str, int]:
    """Added tokens (special or not; whitespace-only ones excepted) by content."""
    return {
        token.content: int(token_id)
        for token_id, token in tokenizer.added_tokens_decoder.items()
        if token.content and not token.content.isspace()
    }


def _breaker(tokens: Sequence[str]) -> Callable[[str], str]:
    breakable = sorted((t for t in tokens if len(t) > 1), key=len, reverse=True)
    if not breakable:
        return lambda text: text
    pattern = re.compile("|".join(map(re.escape, breakable)))

    def neutralise(text: str) -> str:
        while pattern.search(text):  # a broken token may still contain a shorter one
            text = pattern.sub(lambda m: m[0][0] + BREAK + m[0][1:], text)
        return text

    return neutralise


def to_hf_messages(
    messages: Sequence[ChatMessage], text: Callable[[str], str], content: ContentFormat = "openai"
) -> list[dict[str, Any]]:
    """Chat messages in the processor's format, each text passed through ``text``.

    ``content="string"`` (a template that renders ``message['content']`` directly): each
    message's text parts joined by newlines, as one string; images have no place there.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if content == "string":
            texts = [text(part.text) for part in message.parts if isinstance(part, TextPart)]
            out.append({"role": message.role, "content": "\n".join(texts)})
            continue
        parts = [
            {"type": "image"} if isinstance(part, ImageRef) else {"type": "text", "text": text(part.text)}
            for part in message.parts
        ]
        out.append({"role": message.role, "content": parts})
    return out


class PromptBuilder:
    """Renders and tokenises conversations for one checkpoint; thread-safe (no mutable state)."""

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str,
        add_special_tokens: Callable[[str, str | None], bool],
        expand: Callable[[str], str] | None = None,  # the processor's text rewrite (``Adapter.expander``)
    ):
        self._expand = expand or (lambda prompt: prompt)
        self._tokenizer = tokenizer
        self._backend = tokenizer.backend_tokenizer  # Rust tokenizer: encode is thread-safe
        self._template = chat_template
        self.content_format = content_format(chat_template)
        self._add_special_tokens = add_special_tokens
        self._controls = control_tokens(tokenizer)
        self._control_ids = set(self._controls.values())
        self._neutralise = _breaker(list(self._controls))

    def render(self, messages: Sequence[ChatMessage], text: Callable[[str], str] | None = None) -> str:
        """The chat-template string of ``messages`` (texts neutralised unless ``text`` is given)."""
        hf = to_hf_messages(messages, text or self._neutralise, self.content_format)
        try:
            rendered = self._tokenizer.apply_chat_template(
                hf, chat_template=self._template, add_generation_prompt=True, tokenize=False
            )
        except jinja2.TemplateError as exc:  # e.g. the template's raise_exception("roles must alternate")
            raise InvalidInput(f"the model's chat template refused the conversation: {exc}") from None
        return str(rendered)

    def encode(self, prompt: str) -> list[int]:
        prompt = self._expand(prompt)
        special = self._add_special_tokens(prompt, self._tokenizer.bos_token)
        return list(self._backend.encode(prompt, add_special_tokens=special).ids)

    def build(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Prompt token ids (image placeholders not yet expanded); InvalidInput on injection."""
        ids = self.encode(self.render(messages))
        skeleton = self.encode(self.render(_skeleton(messages), text=lambda t: t))
        surplus = self._count_controls(ids) - self._count_controls(skeleton)
        if surplus:
            names = ", ".join(sorted(self._tokenizer.convert_ids_to_tokens(list(surplus))))
            raise InvalidInput(f"message text may not spell special tokens (found {names})")
        return ids

    def _count_controls(self, ids: Sequence[int]) -> Counter[int]:
        return Counter(i for i in ids if i in self._control_ids)


def _skeleton(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    return [
        ChatMessage(m.role, tuple(TextPart(SKELETON_TEXT) if isinstance(p, TextPart) else p for p in m.parts))
        for m in messages
    ]
