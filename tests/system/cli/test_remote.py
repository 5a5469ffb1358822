"""``tandem generate`` and ``tandem chat`` against a fake gateway on a real gRPC server."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

from tandem.cli import build_parser, main
from tests.support.gateway_server import threaded_gateway


class FakeGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Echoes what it received; prompts starting with "fail" get INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self.requests: list[object] = []
        self.metadata: list[dict[str, str]] = []
        self.turns = 0

    def _describe(self, parts: list[gateway_pb2.Part]) -> str:
        images = [p.image for p in parts if p.HasField("image")]
        text = " ".join(p.text for p in parts if p.HasField("text"))
        return f"{text} [{len(images)} images]"

    def Generate(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        parts = request.messages[0].parts
        if parts[-1].text.startswith("fail"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "image 1 is not a PNG, JPEG, WebP, GIF or BMP file"
            )
        yield gateway_pb2.GenerateResponse(text="echo: ", image_ids=["ab" * 32])
        yield gateway_pb2.GenerateResponse(text=self._describe(list(parts)))
        yield gateway_pb2.GenerateResponse(
            finish_reason=common_pb2.FINISH_REASON_STOP,
            usage=common_pb2.Usage(prompt_tokens=7, completion_tokens=2),
        )

    def CreateSession(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        return gateway_pb2.CreateSessionResponse(session=gateway_pb2.Session(session_id="s-1"))

    def Chat(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        if request.session_id != "s-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"session {request.session_id!r} does not exist")
        self.turns += 1
        yield gateway_pb2.ChatResponse(text=f"turn {self.turns}: {self._describe(list(request.parts))}")
        yield gateway_pb2.ChatResponse(finish_reason=common_pb2.FINISH_REASON_STOP)


@pytest.fixture
def gateway() -> Iterator[tuple[FakeGateway, str]]:
    fake = FakeGateway()
    with threaded_gateway(fake) as address:
        yield fake, address


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return int(exited.value.code or 0)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A real 2x2 PNG (``tandem chat`` checks an attached file with Pillow)."""
    from PIL import Image

    path = tmp_path / "tiny.png"
    Image.new("RGB", (2, 2), "red").save(path)
    return path


def test_generate_prints_the_answer(gateway, image: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    fake, address = gateway
    code = run(["generate", "--address", address, "--image", str(image), "--max-new-tokens", "5", "describe"])
    assert code == 0
    assert capsys.readouterr().out == "echo: describe [1 images]\n"
    request = fake.requests[0]
    assert request.messages[0].role == common_pb2.ROLE_USER
    assert request.messages[0].parts[0].image.data == image.read_bytes()
    assert request.messages[0].parts[1].text == "describe"
    assert request.sampling.max_new_tokens == 5 and request.request_id


def test_generate_streams_and_reports_usage(gateway, image: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    fake, address = gateway
    url = "https://example.com/cat.png"
    argv = [
        "generate",
        "--address",
        address,
        "--image",
        str(image),
        "--image",
        url,
        "--stream",
        "--usage",
        "two",
    ]
    assert run(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "echo: two [2 images]\n"
    assert "finish=FINISH_REASON_STOP" in captured.err and "prompt_tokens=7" in captured.err
    assert "ab" * 32 in captured.err
    assert fake.requests[0].messages[0].parts[1].image.url == url


def test_generate_sends_the_token(gateway, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    fake, address = gateway
    assert run(["generate", "--address", address, "--token", "t0k", "hi"]) == 0
    assert fake.metadata[0]["authorization"] == "Bearer t0k"


def test_generate_server_error_prints_status_without_traceback(
    gateway, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    _, address = gateway
    assert run(["generate", "--address", address, "fail please"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: INVALID_ARGUMENT: image 1 is not a PNG, JPEG, WebP, GIF or BMP file"


def test_generate_unreadable_image_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["generate", "--image", str(tmp_path / "missing.png"), "hi"]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "missing.png" in err and "Traceback" not in err


def test_generate_unreachable_gateway_is_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert run(["generate", "--address", f"127.0.0.1:{port}", "--timeout", "5", "hi"]) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_chat_keeps_a_session_and_attaches_images(
    gateway, image: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    fake, address = gateway
    monkeypatch.setattr("sys.stdin", io.StringIO(f"hello\n\n/image {image}\nwhat is this?\n/exit\nignored\n"))
    assert run(["chat", "--address", address, "--system", "be brief"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["turn 1: hello [0 images]", "turn 2: what is this? [1 images]"]
    assert "session s-1" in captured.err
    create, first, second = fake.requests
    assert create.system_prompt == "be brief"  # type: ignore[attr-defined]
    assert first.session_id == second.session_id == "s-1"  # type: ignore[attr-defined]
    assert first.request_id != second.request_id  # type: ignore[attr-defined]


def test_chat_reports_a_failed_turn_and_exits_non_zero(
    gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    _, address = gateway
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    assert run(["chat", "--address", address, "--session", "gone"]) == 1
    assert "error: NOT_FOUND: session 'gone' does not exist" in capsys.readouterr().err


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ([], ["up"], ["generate"], ["chat"]):
        assert run([*command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "usage: tandem" in out
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        for option in action._actions:
            assert option.help, f"{action.prog} {option.option_strings} has no help"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([]) == 2
    assert "usage: tandem" in capsys.readouterr().err
