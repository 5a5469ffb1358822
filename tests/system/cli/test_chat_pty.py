"""``tandem chat`` in a pseudo-terminal, as a person uses it, against the fake gateway of
``test_remote``: commands stay local, ``/image`` is checked at once, Ctrl-C cancels an answer
(the call is cancelled on the server) and the chat goes on, Ctrl-D ends, and the line history
is kept across chats (readline: the up arrow brings the last line back)."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from vlm.v1 import gateway_pb2

from tests.support import ROOT
from tests.support.gateway_server import threaded_gateway
from tests.system.cli.test_remote import FakeGateway

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminal tests run on Linux")


class SlowGateway(FakeGateway):
    """The fake gateway, plus a turn "slow" that streams a tick every 50 ms until cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = threading.Event()

    def Chat(self, request, context):  # type: ignore[no-untyped-def]
        if request.parts[-1].text != "slow":
            yield from super().Chat(request, context)
            return
        self.requests.append(request)
        for _ in range(400):
            if not context.is_active():
                self.cancelled.set()
                return
            yield gateway_pb2.ChatResponse(text="tick ")
            time.sleep(0.05)


@pytest.fixture
def gateway() -> Iterator[tuple[SlowGateway, str]]:
    fake = SlowGateway()
    with threaded_gateway(fake) as address:
        yield fake, address


class Terminal:
    """``tandem chat`` on the child side of a pseudo-terminal (its controlling terminal)."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become tandem chat at once
            try:
                os.execve(sys.executable, [sys.executable, "-m", "tandem.cli", *argv], env)
            finally:
                os._exit(127)
        self.transcript = ""
        self.seen = 0

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def expect(self, text: str, timeout: float = 30.0) -> float:
        """Wait until ``text`` appears after what was already matched; returns the seconds it took."""
        started = time.monotonic()
        while (found := self.transcript.find(text, self.seen)) < 0:
            left = started + timeout - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{text!r} never came; the terminal showed:\n{self.transcript}")
        self.seen = found + len(text)
        return time.monotonic() - started

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], min(timeout, 0.5))
        if ready:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                return False
            if not chunk:
                return False
            self.transcript += chunk.decode(errors="replace").replace("\r\n", "\n")
        return True

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = 0
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"tandem chat did not end; the terminal showed:\n{self.transcript}")

    def close(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def chat(gateway: tuple[SlowGateway, str], tmp_path: Path) -> Iterator[Terminal]:
    _, address = gateway
    terminal = Terminal(["chat", "--address", address], _env(tmp_path))
    try:
        yield terminal
    finally:
        terminal.close()


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'protos'}",
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "HOME": str(tmp_path),
        "INPUTRC": "/dev/null",
        "TERM": "xterm",
    }


def _sent(fake: FakeGateway) -> list[str]:
    chats = [r for r in fake.requests if isinstance(r, gateway_pb2.ChatRequest)]
    return [" ".join(p.text for p in r.parts) for r in chats]


def test_commands_stay_local_and_turns_are_answered(
    chat: Terminal, gateway: tuple[SlowGateway, str], tmp_path: Path
) -> None:
    fake, _ = gateway
    chat.expect("session s-1")
    chat.expect("you> ")
    chat.send("/help\r")
    chat.expect("/image PATH_OR_URL")
    chat.expect("Ctrl-D ends the chat")
    chat.expect("you> ")
    chat.send(f"/image {tmp_path / 'missing.png'}\r")
    assert chat.expect("cannot read image file", timeout=5) < 5  # at once, not at the next turn
    chat.expect("the image is not attached")
    chat.expect("you> ")
    chat.send("/frobnicate now\r")
    chat.expect("error: unknown command /frobnicate; /help lists the commands")
    chat.expect("you> ")
    chat.send("hello there\r")
    chat.expect("turn 1: hello there [0 images]")
    assert _sent(fake) == ["hello there"]  # no command ever reached the gateway
    chat.expect("you> ")
    chat.send("\x04")  # Ctrl-D
    assert chat.wait() == 1  # a refused image and an unknown command count as failures


def test_ctrl_c_cancels_the_answer_not_the_chat(chat: Terminal, gateway: tuple[SlowGateway, str]) -> None:
    fake, _ = gateway
    chat.expect("you> ")
    chat.send("slow\r")
    chat.expect("tick tick ")
    chat.send("\x03")  # Ctrl-C
    chat.expect("answer cancelled")
    assert fake.cancelled.wait(10), "the gateway's call was not cancelled"
    chat.expect("you> ")
    chat.send("still here?\r")
    chat.expect("turn 1: still here? [0 images]")
    chat.expect("you> ")
    chat.send("/exit\r")
    assert chat.wait() == 0


def test_history_is_kept_between_chats(gateway: tuple[SlowGateway, str], tmp_path: Path) -> None:
    fake, address = gateway
    first = Terminal(["chat", "--address", address], _env(tmp_path))
    try:
        first.expect("you> ")
        first.send("remember me\r")
        first.expect("turn 1: remember me")
        first.expect("you> ")
        first.send("\x04")  # Ctrl-D, so that "remember me" is the last line of the history
        assert first.wait() == 0
    finally:
        first.close()
    history = tmp_path / "state" / "tandem" / "chat_history"
    assert "remember me" in history.read_text()
    second = Terminal(["chat", "--address", address], _env(tmp_path))
    try:
        second.expect("you> ")
        second.send("\x1b[A\r")  # up arrow, Enter: the last line of the first chat again
        second.expect("turn 2: remember me")
        second.expect("you> ")
        second.send("\x04")
        assert second.wait() == 0
    finally:
        second.close()
    assert _sent(fake) == ["remember me", "remember me"]
