"""The checkpoint's chat template: where it comes from and which content format it expects.

Templates come in two kinds (as vLLM distinguishes them): most text-only instruct templates
render ``{{ message['content'] }}`` and expect a string; multimodal ones iterate over
``message['content']`` and expect OpenAI-style parts (``{"type": "text", "text": ...}``). The
kind is read from the template's Jinja syntax tree, once at start-up: a template that loops
over a message's content (directly or through a variable set from it), indexes it by number,
or filters it as a list is ``"openai"``; any other is ``"string"``. ``--chat-template`` (a file
or the template itself) replaces the checkpoint's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2 import nodes

ContentFormat = Literal["string", "openai"]
LIST_FILTERS = frozenset({"selectattr", "rejectattr", "map", "first", "last", "batch"})
FLAG = "--chat-template"


def load_chat_template(path: Path, tokenizer: Any, override: str = "") -> str:
    """``override`` (a file or a Jinja string) if given, else the checkpoint's template.

    ``ValueError`` naming ``--chat-template`` when the checkpoint has none or the override is
    neither a readable file nor a template; a template that does not parse is refused too.
    """
    template = _from_flag(override) if override else checkpoint_template(path, tokenizer)
    if not template:
        raise ValueError(f"{path} has no chat template; give one with {FLAG} FILE_OR_STRING")
    try:
        jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as exc:
        source = FLAG if override else f"the chat template of {path}"
        raise ValueError(f"{source} is not valid Jinja: {exc}") from None
    return template


def _from_flag(value: str) -> str:
    file = Path(value).expanduser()
    if "{" not in value and "\n" not in value:
        if not file.is_file():
            raise ValueError(f"{FLAG} {value!r}: no such file (nor a Jinja template)")
        return file.read_text()
    return value


def checkpoint_template(path: Path, tokenizer: Any) -> str:
    """The template the checkpoint's processor would use (its files first), else the tokenizer's."""
    jinja = path / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    for name in ("chat_template.json", "processor_config.json"):
        file = path / name
        if file.exists():
            template = json.loads(file.read_text()).get("chat_template")
            if template:
                return str(template)
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    return str(template or "")


def content_format(template: str) -> ContentFormat:
    """``"openai"`` when the template treats a message's content as a list of parts."""
    tree = jinja2.Environment().parse(template)
    message_vars = {
        loop.target.name
        for loop in tree.find_all(nodes.For)
        if isinstance(loop.target, nodes.Name) and _mentions_messages(loop.iter)
    } or {"message"}
    content_vars = _content_vars(tree, message_vars)
    for node in tree.find_all((nodes.For, nodes.Getitem, nodes.Filter)):
        used = _used_as_list(node)
        if used is not None and _is_content(used, message_vars, content_vars):
            return "openai"
    return "string"


def _used_as_list(node: nodes.Node) -> nodes.Node | None:
    """The expression ``node`` treats as a list: a loop's iterable, ``x[0]``, ``x | map(...)``."""
    if isinstance(node, nodes.For):
        return node.iter
    if isinstance(node, nodes.Getitem) and _numeric(node.arg):
        return node.node
    if isinstance(node, nodes.Filter) and node.name in LIST_FILTERS:
        return node.node
    return None


def _mentions_messages(node: nodes.Node) -> bool:
    return any("messages" in name.name for name in _names(node))


def _names(node: nodes.Node) -> Iterator[nodes.Name]:
    if isinstance(node, nodes.Name):
        yield node
    yield from node.find_all(nodes.Name)


def _content_access(node: nodes.Node, message_vars: set[str]) -> bool:
    """``m.content`` or ``m['content']`` for a message variable ``m``."""
    if isinstance(node, nodes.Getattr):
        return node.attr == "content" and _is_name(node.node, message_vars)
    if isinstance(node, nodes.Getitem):
        key = node.arg
        return isinstance(key, nodes.Const) and key.value == "content" and _is_name(node.node, message_vars)
    return False


def _is_name(node: nodes.Node, names: set[str]) -> bool:
    return isinstance(node, nodes.Name) and node.name in names


def _has_content(node: nodes.Node, message_vars: set[str]) -> bool:
    return _content_access(node, message_vars) or any(
        _content_access(child, message_vars) for child in node.find_all((nodes.Getattr, nodes.Getitem))
    )


def _content_vars(tree: nodes.Template, message_vars: set[str]) -> set[str]:
    """Variables set from an expression that reads a message's content."""
    return {
        assign.target.name
        for assign in tree.find_all(nodes.Assign)
        if isinstance(assign.target, nodes.Name) and _has_content(assign.node, message_vars)
    }


def _is_content(node: nodes.Node, message_vars: set[str], content_vars: set[str]) -> bool:
    while isinstance(node, nodes.Filter) and node.node is not None:  # content | list, ...
        node = node.node
    return _content_access(node, message_vars) or _is_name(node, content_vars)


def _numeric(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Const) and isinstance(node.value, int)
