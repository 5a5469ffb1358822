"""``tandem chat``: an interactive multi-turn session with a running gateway.

Each line is one turn of a session the gateway keeps. A line that starts with ``/`` is a
command for this program and never reaches the model (``//`` sends the rest of the line,
starting with ``/``):

- ``/help`` lists the commands;
- ``/image PATH_OR_URL`` attaches an image to the next turn; a file is read and checked with
  Pillow at once, so a wrong path is reported before the turn, not after it;
- ``/exit`` (or Ctrl-D) ends the chat.

An unknown command is refused with a hint. On a terminal, lines are read through ``readline``
(line editing, and history kept in ``$XDG_STATE_HOME/tandem/chat_history``, by default
``~/.local/state/tandem/chat_history``); without a ``readline`` module, or from a pipe, lines
are read plainly. Ctrl-C during an answer cancels that answer (the turn is not committed) and
the chat goes on; Ctrl-C at the prompt clears the line. Answers go to stdout, everything else
to stderr. Exit status: 0, or 1 when a turn, a command or an image failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tandem.cli.remote import LocalError, add_connection, add_sampling, failed, load_images, open_pipeline

if TYPE_CHECKING:
    from tandem.client import GenerationConfig, Pipeline

PROMPT = "you> "
COMMANDS = {
    "/help": "list these commands",
    "/image PATH_OR_URL": "attach an image (file, http(s) URL or data: URI) to the next turn",
    "/exit": "end the chat (Ctrl-D too)",
}
HINT = "/help lists the commands; start a line with // to send text that begins with /"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "chat",
        help="an interactive multi-turn session with a running gateway",
        description=(
            "Chat with a running Tandem gateway. Each line you type is one turn; the gateway keeps "
            "the history. Commands: /help, /image PATH_OR_URL (attaches an image to the next turn), "
            "/exit. Ctrl-C cancels an answer, Ctrl-D ends."
        ),
    )
    parser.add_argument("--session", help="continue this existing session id instead of creating one")
    parser.add_argument("--system", default="", help="system prompt of a new session")
    add_sampling(parser)
    add_connection(parser)
    parser.set_defaults(run=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    from tandem.client import TandemClientError

    try:
        pipe, config = open_pipeline(args)
    except LocalError as exc:
        return failed(exc, 2)
    with pipe:
        try:
            session_id = args.session or pipe.create_session(args.system).session_id
        except TandemClientError as exc:
            return failed(exc, 1)
        print(f"session {session_id} (/help lists the commands, /exit or Ctrl-D ends)", file=sys.stderr)
        reader = LineReader(sys.stdin, sys.stdout, sys.stderr, history_path())
        try:
            return ChatShell(pipe, config, session_id, reader).run()
        finally:
            reader.close()


def history_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the chat history is kept: ``$XDG_STATE_HOME/tandem/chat_history`` (an absolute
    ``XDG_STATE_HOME``), else ``~/.local/state/tandem/chat_history``."""
    state = (os.environ if env is None else env).get("XDG_STATE_HOME", "")
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "tandem" / "chat_history"


class LineReader:
    """The user's lines: through ``readline`` on a terminal (editing, history), plainly otherwise.

    ``read()`` returns a line without its newline, or None at the end of input (Ctrl-D).
    ``close()`` saves the history.
    """

    def __init__(self, stdin: TextIO, stdout: TextIO, stderr: TextIO, history: Path | None):
        self.stdin, self.stderr = stdin, stderr
        self.interactive = stdin.isatty() and stdout.isatty()
        self.history = history
        self._readline = _load_readline(history) if self.interactive else None

    def read(self) -> str | None:
        if not self.interactive:
            if self.stdin.isatty():  # answers go to a file: the prompt to the terminal
                print(PROMPT, end="", file=self.stderr, flush=True)
            line = self.stdin.readline()
            return line.removesuffix("\n") if line else None
        while True:
            try:
                return input(PROMPT)
            except EOFError:
                print(file=self.stderr)
                return None
            except KeyboardInterrupt:
                print("^C (/exit or Ctrl-D ends the chat)", file=self.stderr)

    def close(self) -> None:
        if self._readline is None or self.history is None:
            return
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            self._readline.write_history_file(str(self.history))
        except OSError as exc:
            print(f"note: chat history not saved to {self.history}: {exc.strerror or exc}", file=self.stderr)


def _load_readline(history: Path | None) -> Any:
    """The ``readline`` module with the history loaded, or None where there is none."""
    try:
        import readline
    except ImportError:
        return None
    readline.set_history_length(1000)
    if history is not None and history.is_file():
        with contextlib.suppress(OSError):  # an unreadable history starts empty
            readline.read_history_file(str(history))
    return readline


@dataclass
class ChatShell:
    """The chat loop: reads lines, runs commands, sends turns; ``run()`` returns the exit status."""

    pipe: Pipeline
    config: GenerationConfig
    session_id: str
    reader: LineReader
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    pending: list[bytes | str] = field(default_factory=list)
    failed: bool = False

    def run(self) -> int:
        while (line := self.reader.read()) is not None:
            text = line.strip()
            if text.startswith("/") and not text.startswith("//"):
                if not self.command(text):
                    break
            elif text:
                self.turn(text.removeprefix("/"))
        return 1 if self.failed else 0

    def command(self, text: str) -> bool:
        """Run one ``/command``; False when the chat should end."""
        name, _, argument = text.partition(" ")
        actions: dict[str, Callable[[str], bool]] = {
            "/help": self.help,
            "/image": self.attach,
            "/exit": lambda _: False,
        }
        action = actions.get(name)
        if action is None:
            self.refuse(f"unknown command {name}; {HINT}")
            return True
        return action(argument.strip())

    def help(self, _: str) -> bool:
        width = max(map(len, COMMANDS))
        lines = [f"  {usage:<{width}}  {what}" for usage, what in COMMANDS.items()]
        lines += ["  any other line is sent to the model as one turn (// sends a line starting with /)"]
        lines += ["  Ctrl-C cancels an answer; Ctrl-D ends the chat"]
        print("\n".join(lines), file=self.err)
        return True

    def attach(self, source: str) -> bool:
        if not source:
            self.refuse("usage: /image PATH_OR_URL")
            return True
        try:
            image, what = check_image(source)
        except LocalError as exc:
            self.refuse(f"{exc}; the image is not attached")
            return True
        self.pending.append(image)
        print(f"image {len(self.pending)} for the next turn: {what}", file=self.err)
        return True

    def refuse(self, message: str) -> None:
        print(f"error: {message}", file=self.err)
        self.failed = True

    def turn(self, text: str) -> None:
        """Send one turn with the attached images and print the answer as it streams."""
        from tandem.client import TandemClientError

        images, self.pending = self.pending, []
        chunks = self.pipe.stream_chat((text, images), self.session_id, self.config)
        try:
            for chunk in chunks:
                self.out.write(chunk.text)
                self.out.flush()
            self.out.write("\n")
        except KeyboardInterrupt:
            getattr(chunks, "close", lambda: None)()  # cancels the call: the turn is not committed
            self.out.write("\n")
            print("(answer cancelled; the session is as it was before this turn)", file=self.err)
        except TandemClientError as exc:
            failed(exc, 1)
            self.failed = True
        finally:
            self.out.flush()


def check_image(source: str) -> tuple[bytes | str, str]:
    """An image for the next turn and a description of it: a URL or data: URI as given (the
    gateway fetches and checks it), a file read now and checked to be an image Pillow reads.
    ``LocalError`` says what is wrong."""
    (image,) = load_images([source])
    if isinstance(image, str):
        return image, f"{image[:60]}{'...' if len(image) > 60 else ''} (fetched by the gateway)"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as picture:
            kind, (width, height) = picture.format, picture.size
            picture.verify()
    except UnidentifiedImageError as exc:
        raise LocalError(f"{source} is not an image file") from exc
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise LocalError(f"{source} is a damaged or unsupported image ({exc})") from exc
    return image, f"{source} ({kind} {width}x{height}, {len(image) / 1024:.0f} KiB)"
