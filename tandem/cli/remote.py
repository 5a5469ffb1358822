"""``tandem generate`` and ``tandem chat``: talk to a running gateway through ``tandem.client``.

Errors print the gRPC status code and the server's message (never a traceback) and the command
exits non-zero: 1 for an RPC error, 2 for a local problem such as an unreadable image file or
an invalid option value. The client is imported when a command runs, so ``tandem --help`` and
``tandem up`` never load grpc for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tandem.client import GenerationConfig, Pipeline, Response

CHAT_BANNER = "/image PATH attaches an image to the next turn, /exit ends"


class LocalError(Exception):
    """A problem on this side of the wire (e.g. an image file that cannot be read)."""


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default="localhost:50051", help="gateway host:port (default: %(default)s)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("TANDEM_AUTH_TOKEN"),
        help="bearer token when the gateway requires one (default: $TANDEM_AUTH_TOKEN)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="deadline of each call in seconds (default: %(default)s)"
    )


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-new-tokens", type=int, default=0, help="most tokens to generate (0: server default)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), > 0 samples")


def add_generate_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "generate",
        help="send one prompt (with images) to a running gateway and print the answer",
        description="Send one prompt, with zero or more images, to a running Tandem gateway.",
    )
    parser.add_argument("prompt", help="the question or instruction")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="an image file, http(s) URL or data: URI; repeat for several images (they precede the text)",
    )
    parser.add_argument("--stream", action="store_true", help="print text as it is generated")
    parser.add_argument(
        "--usage", action="store_true", help="print finish reason, token usage and image ids to stderr"
    )
    _add_sampling(parser)
    _add_connection(parser)
    parser.set_defaults(run=run_generate)


def add_chat_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "chat",
        help="an interactive multi-turn session with a running gateway",
        description=(
            "Chat with a running Tandem gateway. Each line you type is one turn; the gateway keeps the "
            "history. Commands: /image PATH_OR_URL attaches an image to the next turn, /exit ends."
        ),
    )
    parser.add_argument("--session", help="continue this existing session id instead of creating one")
    parser.add_argument("--system", default="", help="system prompt of a new session")
    _add_sampling(parser)
    _add_connection(parser)
    parser.set_defaults(run=run_chat)


def open_pipeline(args: argparse.Namespace) -> tuple[Pipeline, GenerationConfig]:
    """The client for ``--address`` and friends, and the sampling flags; ``LocalError`` if invalid."""
    from tandem.client import GenerationConfig, Pipeline

    try:
        config = GenerationConfig(max_new_tokens=args.max_new_tokens or None, temperature=args.temperature)
        return Pipeline(args.address, token=args.token, tls=args.tls, timeout=args.timeout), config
    except ValueError as exc:
        raise LocalError(str(exc)) from exc


def load_images(sources: Sequence[str]) -> list[bytes | str]:
    """Image files read now (by the client's own reader), URLs and data: URIs as given.

    Reading before the call makes an unreadable file a local error rather than a failed call.
    """
    from tandem.client import InvalidArgument
    from tandem.client.images import to_image_source

    loaded: list[bytes | str] = []
    for source in sources:
        try:
            image = to_image_source(source)
        except InvalidArgument as exc:
            raise LocalError(exc.details) from exc
        loaded.append(image.url or image.data)
    return loaded


def print_stream(chunks: Iterable[Response], stream: bool, out: TextIO) -> Response:
    """Print an answer's text (chunk by chunk when ``stream``); returns the whole answer."""
    from tandem.client import Response

    answer = Response()
    for chunk in chunks:
        answer.extend(chunk)
        if stream:
            out.write(chunk.text)
            out.flush()
    out.write("" if stream else answer.text)
    out.write("\n")
    out.flush()
    return answer


def _report_usage(answer: Response) -> None:
    from vlm.v1 import common_pb2

    from tandem.client import Usage
    from tandem.wire.convert import finish_to_pb

    reason = common_pb2.FinishReason.Name(finish_to_pb(answer.finish_reason))
    u = answer.usage or Usage()
    print(
        f"finish={reason} prompt_tokens={u.prompt_tokens} image_tokens={u.image_tokens} "
        f"completion_tokens={u.completion_tokens} cached_tokens={u.cached_tokens} "
        f"image_ids={answer.image_ids}",
        file=sys.stderr,
    )


def _failed(exc: Exception, code: int) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return code


def run_generate(args: argparse.Namespace) -> int:
    from tandem.client import TandemClientError

    try:
        prompt = (args.prompt, load_images(args.image))
        pipe, config = open_pipeline(args)
    except LocalError as exc:
        return _failed(exc, 2)
    with pipe:
        try:
            answer = print_stream(pipe.stream_infer(prompt, config), args.stream, sys.stdout)
        except TandemClientError as exc:  # its str is "CODE: the server's message"
            return _failed(exc, 1)
    if args.usage:
        _report_usage(answer)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    from tandem.client import TandemClientError

    try:
        pipe, config = open_pipeline(args)
    except LocalError as exc:
        return _failed(exc, 2)
    with pipe:
        try:
            session_id = args.session or pipe.create_session(args.system).session_id
        except TandemClientError as exc:
            return _failed(exc, 1)
        print(f"session {session_id} ({CHAT_BANNER})", file=sys.stderr)
        try:
            return _chat_loop(pipe, config, session_id, sys.stdin)
        except KeyboardInterrupt:
            return 130


def _chat_loop(pipe: Pipeline, config: GenerationConfig, session_id: str, lines: TextIO) -> int:
    pending: list[str] = []
    failed = False
    interactive = lines.isatty()
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = lines.readline()
        text = line.strip()
        if not line or text == "/exit":
            return 1 if failed else 0
        if text.startswith("/image"):
            pending.append(text.removeprefix("/image").strip())
            continue
        if not text:
            continue
        images, pending = pending, []
        try:
            prompt = (text, load_images(images))
        except LocalError as exc:
            _failed(exc, 2)
            failed = True
            continue
        failed = _chat_turn(pipe, config, session_id, prompt) or failed


def _chat_turn(pipe: Pipeline, config: GenerationConfig, session_id: str, prompt: object) -> bool:
    """One turn; True when it failed (the session is then left as it was)."""
    from tandem.client import TandemClientError

    try:
        print_stream(pipe.stream_chat(prompt, session_id, config), True, sys.stdout)
    except TandemClientError as exc:
        _failed(exc, 1)
        return True
    return False
