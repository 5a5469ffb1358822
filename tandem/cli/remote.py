"""``tandem generate``, and what it shares with ``tandem chat``: talking to a running gateway
through ``tandem.client``.

The gateway is ``--address``, else ``$TANDEM_ADDRESS``, else localhost:50051 (the client's own
default). Errors print the gRPC status code and the server's message (never a traceback) and the
command exits non-zero: 1 for an RPC error, 2 for a local problem such as an unreadable image
file or an invalid option value. The client is imported when a command runs, so ``tandem
--help`` and ``tandem up`` never load grpc for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tandem.client import GenerationConfig, Pipeline, Response


class LocalError(Exception):
    """A problem on this side of the wire (e.g. an image file that cannot be read)."""


def add_connection(parser: argparse.ArgumentParser) -> None:
    """``--address``, ``--token``, ``--tls`` and ``--timeout``."""
    parser.add_argument(
        "--address", help="gateway host:port (default: $TANDEM_ADDRESS, else localhost:50051)"
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


def add_sampling(parser: argparse.ArgumentParser) -> None:
    """``--max-new-tokens`` and ``--temperature``."""
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
    add_sampling(parser)
    add_connection(parser)
    parser.set_defaults(run=run_generate)


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


def failed(exc: Exception, code: int) -> int:
    """Print ``error: <exc>`` to stderr; returns ``code``."""
    print(f"error: {exc}", file=sys.stderr)
    return code


def run_generate(args: argparse.Namespace) -> int:
    from tandem.client import TandemClientError

    try:
        prompt = (args.prompt, load_images(args.image))
        pipe, config = open_pipeline(args)
    except LocalError as exc:
        return failed(exc, 2)
    with pipe:
        try:
            answer = print_stream(pipe.stream_infer(prompt, config), args.stream, sys.stdout)
        except TandemClientError as exc:  # its str is "CODE: the server's message"
            return failed(exc, 1)
    if args.usage:
        _report_usage(answer)
    return 0
