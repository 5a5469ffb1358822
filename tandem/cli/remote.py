"""``tandem generate`` and ``tandem chat``: talk to a running gateway with the generated stubs.

Errors print the gRPC status code and the server's message (never a traceback) and the command
exits non-zero: 1 for an RPC error, 2 for a local problem such as an unreadable image file.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
URL_PREFIXES = ("http://", "https://", "data:")


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


def _channel(args: argparse.Namespace) -> Any:
    import grpc

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if args.tls:
        return grpc.secure_channel(args.address, grpc.ssl_channel_credentials(), options=options)
    return grpc.insecure_channel(args.address, options=options)


def _metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {args.token}")] if args.token else []


def image_part(source: str) -> Any:
    """A ``vlm.v1.Part`` for an image file path, URL or data URI."""
    from vlm.v1 import gateway_pb2

    if source.startswith(URL_PREFIXES):
        return gateway_pb2.Part(image=gateway_pb2.ImageSource(url=source))
    try:
        data = Path(source).expanduser().read_bytes()
    except OSError as exc:
        raise LocalError(f"cannot read image {source!r}: {exc.strerror or exc}") from exc
    return gateway_pb2.Part(image=gateway_pb2.ImageSource(data=data))


def user_parts(text: str, images: Sequence[str]) -> list[Any]:
    """Images first, then the text (the LLaVA convention; the template places them)."""
    from vlm.v1 import gateway_pb2

    return [*(image_part(i) for i in images), gateway_pb2.Part(text=text)]


def _sampling(args: argparse.Namespace) -> Any:
    from vlm.v1 import common_pb2

    return common_pb2.SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)


def print_stream(replies: Iterable[Any], stream: bool, out: TextIO) -> Any:
    """Print the text of a Generate/Chat stream; returns the last message."""
    last = None
    pieces = []
    for reply in replies:
        last = reply
        if stream:
            out.write(reply.text)
            out.flush()
        else:
            pieces.append(reply.text)
    out.write("" if stream else "".join(pieces))
    out.write("\n")
    out.flush()
    return last


def _report_usage(first_ids: Sequence[str], last: Any) -> None:
    from vlm.v1 import common_pb2

    if last is None:
        return
    reason = common_pb2.FinishReason.Name(last.finish_reason)
    u = last.usage
    print(
        f"finish={reason} prompt_tokens={u.prompt_tokens} image_tokens={u.image_tokens} "
        f"completion_tokens={u.completion_tokens} cached_tokens={u.cached_tokens} "
        f"image_ids={list(first_ids)}",
        file=sys.stderr,
    )


def _rpc_error(exc: Exception) -> int:
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else ""
    print(f"error: {code}: {details}", file=sys.stderr)
    return 1


def run_generate(args: argparse.Namespace) -> int:
    import grpc
    from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    try:
        message = gateway_pb2.ChatMessage(
            role=common_pb2.ROLE_USER, parts=user_parts(args.prompt, args.image)
        )
    except LocalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    request = gateway_pb2.GenerateRequest(
        messages=[message], sampling=_sampling(args), request_id=uuid.uuid4().hex
    )
    with _channel(args) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            replies = stub.Generate(request, timeout=args.timeout, metadata=_metadata(args))
            ids: list[str] = []
            last = print_stream(_collect_ids(replies, ids), args.stream, sys.stdout)
        except grpc.RpcError as exc:
            return _rpc_error(exc)
    if args.usage:
        _report_usage(ids, last)
    return 0


def _collect_ids(replies: Iterable[Any], ids: list[str]) -> Iterator[Any]:
    for reply in replies:
        if reply.image_ids and not ids:
            ids.extend(reply.image_ids)
        yield reply


def run_chat(args: argparse.Namespace) -> int:
    import grpc
    from vlm.v1 import gateway_pb2, gateway_pb2_grpc

    with _channel(args) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        session_id = args.session
        try:
            if not session_id:
                created = stub.CreateSession(
                    gateway_pb2.CreateSessionRequest(system_prompt=args.system),
                    timeout=args.timeout,
                    metadata=_metadata(args),
                )
                session_id = created.session.session_id
        except grpc.RpcError as exc:
            return _rpc_error(exc)
        print(
            f"session {session_id} (/image PATH attaches an image to the next turn, /exit ends)",
            file=sys.stderr,
        )
        try:
            return _chat_loop(args, stub, session_id, sys.stdin)
        except KeyboardInterrupt:
            return 130


def _chat_loop(args: argparse.Namespace, stub: Any, session_id: str, lines: TextIO) -> int:
    from vlm.v1 import gateway_pb2

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
        try:
            parts = user_parts(text, pending)
        except LocalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            pending.clear()
            failed = True
            continue
        pending.clear()
        request = gateway_pb2.ChatRequest(
            session_id=session_id, parts=parts, sampling=_sampling(args), request_id=uuid.uuid4().hex
        )
        failed = _chat_turn(args, stub, request) or failed


def _chat_turn(args: argparse.Namespace, stub: Any, request: Any) -> bool:
    """One turn; True when it failed (the session is then left as it was)."""
    import grpc

    try:
        print_stream(stub.Chat(request, timeout=args.timeout, metadata=_metadata(args)), True, sys.stdout)
    except grpc.RpcError as exc:
        _rpc_error(exc)
        return True
    return False
