"""Chat templates: the content format read from the Jinja tree, ``--chat-template``, and the
start-up error for a checkpoint without a template."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from llm_service.chat_template import content_format, load_chat_template
from llm_service.conversation import ChatMessage, ImageRef, TextPart
from llm_service.prompt import to_hf_messages
from tandem.testing.checkpoints import CHATML_TEMPLATE, VICUNA_TEMPLATE
from tandem.testing.families.text_decoders import GEMMA_TEMPLATE, MISTRAL_TEMPLATE, PHI3_TEMPLATE

STRING_TEMPLATES = {
    "plain": "{% for message in messages %}{{ message['content'] }}{% endfor %}",
    "attribute and filter": "{% for m in messages %}{{ m.content | trim }}{% endfor %}",
    "set from content": "{% for m in messages %}{% set c = m['content'] %}{{ c }}{% endfor %}",
    "mistral": MISTRAL_TEMPLATE,
    "gemma": GEMMA_TEMPLATE,
    "phi3": PHI3_TEMPLATE,
}
PARTS_TEMPLATES = {
    "loop": "{% for m in messages %}{% for p in m['content'] %}{{ p['text'] }}{% endfor %}{% endfor %}",
    "loop over a slice": (
        "{% for m in loop_messages %}{% for p in m.content %}{{ p.text }}{% endfor %}{% endfor %}"
    ),
    "indexed": "{% for m in messages %}{{ m['content'][0]['text'] }}{% endfor %}",
    "filtered": "{% for m in messages %}{{ m['content'] | map(attribute='text') | join }}{% endfor %}",
    "through a variable": (
        "{% for m in messages %}{% set parts = m['content'] %}{% for p in parts %}{{ p.text }}"
        "{% endfor %}{% endfor %}"
    ),
    "chatml": CHATML_TEMPLATE,
    "vicuna": VICUNA_TEMPLATE,
}


@pytest.mark.parametrize("name", sorted(STRING_TEMPLATES))
def test_string_content_templates(name: str) -> None:
    assert content_format(STRING_TEMPLATES[name]) == "string"


@pytest.mark.parametrize("name", sorted(PARTS_TEMPLATES))
def test_parts_content_templates(name: str) -> None:
    assert content_format(PARTS_TEMPLATES[name]) == "openai"


def test_string_format_joins_the_text_parts() -> None:
    image = ImageRef("ab" * 32, 4)
    messages = [ChatMessage("user", (TextPart("one"), image, TextPart("two")))]
    assert to_hf_messages(messages, str.upper, "string") == [{"role": "user", "content": "ONE\nTWO"}]
    parts = to_hf_messages(messages, str.upper, "openai")[0]["content"]
    assert parts == [{"type": "text", "text": "ONE"}, {"type": "image"}, {"type": "text", "text": "TWO"}]


def tokenizer(template: str | None) -> SimpleNamespace:
    return SimpleNamespace(chat_template=template)


def test_the_checkpoint_template_is_used_unless_overridden(tmp_path: Path) -> None:
    assert load_chat_template(tmp_path, tokenizer("{{ 'a' }}")) == "{{ 'a' }}"
    (tmp_path / "chat_template.jinja").write_text("{{ 'jinja file' }}")
    assert load_chat_template(tmp_path, tokenizer("{{ 'a' }}")) == "{{ 'jinja file' }}"
    assert load_chat_template(tmp_path, tokenizer(None), "{{ 'given' }}") == "{{ 'given' }}"
    file = tmp_path / "mine.jinja"
    file.write_text("{{ 'from a file' }}")
    assert load_chat_template(tmp_path, tokenizer(None), str(file)) == "{{ 'from a file' }}"


def test_a_checkpoint_without_a_template_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no chat template; give one with --chat-template"):
        load_chat_template(tmp_path, tokenizer(None))


@pytest.mark.parametrize(
    ("value", "message"),
    [("no/such/file.jinja", "no such file"), ("{% for x in %}", "--chat-template is not valid Jinja")],
)
def test_a_bad_override_is_refused(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_chat_template(tmp_path, tokenizer("{{ 'a' }}"), value)
