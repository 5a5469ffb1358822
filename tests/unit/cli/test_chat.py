"""``tandem chat``'s shell with a fake pipeline: commands never reach the model, images are
checked at once, Ctrl-C cancels an answer and the chat goes on; where the history is kept."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image

from tandem.cli.chat import ChatShell, LineReader, check_image, history_path
from tandem.cli.remote import LocalError
from tandem.client import GenerationConfig, Response


class FakePipe:
    """Records each turn; answers "echo <text> [n images]" in two chunks, or is interrupted."""

    def __init__(self) -> None:
        self.turns: list[tuple[str, list[Any]]] = []
        self.closed = 0

    def stream_chat(self, prompt: tuple[str, list[Any]], session: str, config: object) -> Iterator[Response]:
        self.turns.append(prompt)
        text, images = prompt
        return self._answer(f"echo {text} [{len(images)} images]", interrupt=text == "interrupt me")

    def _answer(self, text: str, interrupt: bool) -> Iterator[Response]:
        try:
            yield Response(text=text[:5])
            if interrupt:
                raise KeyboardInterrupt  # what Ctrl-C raises while the client waits for a chunk
            yield Response(text=text[5:])
        finally:
            self.closed += 1


def shell(lines: str) -> tuple[ChatShell, FakePipe, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    reader = LineReader(io.StringIO(lines), out, err, history=None)
    pipe = FakePipe()
    return ChatShell(cast(Any, pipe), GenerationConfig(), "s-1", reader, out, err), pipe, out, err


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (4, 3), "red").save(path)
    return path


def test_help_lists_the_commands_and_is_not_sent() -> None:
    chat, pipe, out, err = shell("/help\n")
    assert chat.run() == 0
    assert not pipe.turns and out.getvalue() == ""
    for command in ("/help", "/image PATH_OR_URL", "/exit", "Ctrl-D"):
        assert command in err.getvalue()


def test_unknown_commands_are_refused_with_a_hint() -> None:
    chat, pipe, _, err = shell("/imgae cat.png\n/quit\nhello\n")
    assert chat.run() == 1  # a refused line counts as a failure for scripts
    assert [text for text, _ in pipe.turns] == ["hello"]
    assert "error: unknown command /imgae; /help lists the commands" in err.getvalue()
    assert "unknown command /quit" in err.getvalue()


def test_double_slash_sends_a_line_that_starts_with_a_slash() -> None:
    chat, pipe, _, _ = shell("//usr/bin is a folder?\n")
    assert chat.run() == 0
    assert pipe.turns == [("/usr/bin is a folder?", [])]


def test_image_is_checked_at_once_and_sent_with_the_next_turn(png: Path) -> None:
    chat, pipe, out, err = shell(f"/image {png}\nwhat is it?\nand now?\n")
    assert chat.run() == 0
    assert "image 1 for the next turn" in err.getvalue() and "PNG 4x3" in err.getvalue()
    assert pipe.turns == [("what is it?", [png.read_bytes()]), ("and now?", [])]
    assert out.getvalue().splitlines() == ["echo what is it? [1 images]", "echo and now? [0 images]"]


def test_a_missing_image_is_refused_before_the_turn(tmp_path: Path) -> None:
    chat, pipe, _, err = shell(f"/image {tmp_path / 'nope.png'}\n")
    assert chat.run() == 1
    assert "cannot read image file" in err.getvalue() and "nope.png" in err.getvalue()
    assert "the image is not attached" in err.getvalue() and not pipe.turns and not chat.pending


def test_ctrl_c_during_an_answer_cancels_it_and_the_chat_goes_on() -> None:
    chat, pipe, out, err = shell("interrupt me\nhello\n/exit\nnever sent\n")
    assert chat.run() == 0
    assert [text for text, _ in pipe.turns] == ["interrupt me", "hello"]
    assert pipe.closed == 2  # the interrupted stream was closed (its call cancelled)
    assert "answer cancelled" in err.getvalue()
    assert out.getvalue().splitlines() == ["echo ", "echo hello [0 images]"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just text", "is not an image file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "is not an image file"),
    ],
)
def test_check_image_refuses_what_pillow_cannot_read(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(LocalError, match=message):
        check_image(str(path))


def test_check_image_refuses_a_damaged_image(png: Path) -> None:
    data = png.read_bytes()
    png.write_bytes(data[:20] + b"\xff" * 8 + data[28:])  # corrupt the IHDR chunk's checksum region
    with pytest.raises(LocalError):
        check_image(str(png))


def test_check_image_passes_urls_to_the_gateway() -> None:
    image, what = check_image("https://example.com/cat.png")
    assert image == "https://example.com/cat.png" and "fetched by the gateway" in what


def test_history_lives_in_the_state_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert history_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "tandem" / "chat_history"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "state" / "tandem" / "chat_history"
    assert history_path({}) == expected
    assert history_path({"XDG_STATE_HOME": "relative/ignored"}) == expected


def test_plain_input_needs_no_readline() -> None:
    reader = LineReader(io.StringIO("one\ntwo"), io.StringIO(), io.StringIO(), history=None)
    assert not reader.interactive
    assert [reader.read(), reader.read(), reader.read()] == ["one", "two", None]
    reader.close()


def test_no_readline_module_is_no_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tandem.cli import chat

    monkeypatch.setitem(sys.modules, "readline", None)  # import readline -> ImportError
    assert chat._load_readline(tmp_path / "history") is None
