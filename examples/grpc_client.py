"""Call a Tandem gateway from another service with the generated gRPC stubs only.

The stubs are the ``vlm.v1`` modules generated from ``protos/vlm/v1/*.proto`` (install the
``tandem`` package, or run ``grpc_tools.protoc`` on the protos in your own build); nothing else
from Tandem is needed. Run against a live gateway::

    python examples/grpc_client.py --address localhost:50051 --image examples/shapes.png

It prints the model info, streams one answer about the image, then holds a two-turn chat in a
server-side session, reads the session's history back, and deletes the session.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
from vlm.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


def user_message(text: str, image: bytes | None) -> gateway_pb2.ChatMessage:
    """One user message: the image (if any) first, then the text."""
    parts = [gateway_pb2.Part(image=gateway_pb2.ImageSource(data=image))] if image else []
    parts.append(gateway_pb2.Part(text=text))
    return gateway_pb2.ChatMessage(role=common_pb2.ROLE_USER, parts=parts)


def collect(stream: Iterable[gateway_pb2.GenerateResponse | gateway_pb2.ChatResponse]) -> str:
    """Join a streamed answer; report why it ended and the token usage."""
    text = ""
    for message in stream:
        text += message.text
        if message.finish_reason:
            reason = common_pb2.FinishReason.Name(message.finish_reason)
            print(f"  finish={reason} prompt_tokens={message.usage.prompt_tokens}", end="")
            print(f" completion_tokens={message.usage.completion_tokens}")
    return text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--address", default="localhost:50051", help="gateway host:port")
    parser.add_argument("--image", type=Path, help="an image file to ask about")
    parser.add_argument("--prompt", default="Describe the image.", help="the question")
    parser.add_argument(
        "--followup", default="How many shapes are there?", help="the second question of the chat session"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--token", help="bearer token, when the gateway has auth on")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each call, seconds")
    return parser.parse_args()


def chat_in_session(
    stub: gateway_pb2_grpc.GatewayServiceStub,
    turns: list[gateway_pb2.ChatMessage],
    sampling: common_pb2.SamplingParams,
    call: dict[str, Any],
) -> None:
    """Create a session, send one user turn per message, read the history, delete it."""
    session = stub.CreateSession(gateway_pb2.CreateSessionRequest(), **call).session
    print(f"session: {session.session_id}")
    for turn in turns:
        # A client request id makes a retried turn idempotent: the same answer, no duplicate.
        chat = gateway_pb2.ChatRequest(
            session_id=session.session_id, parts=turn.parts, sampling=sampling, request_id=uuid.uuid4().hex
        )
        print(f"chat: {collect(stub.Chat(chat, **call))!r}")
    history = stub.GetSession(gateway_pb2.GetSessionRequest(session_id=session.session_id), **call)
    print(f"history: {len(history.session.messages)} messages")
    stub.DeleteSession(gateway_pb2.DeleteSessionRequest(session_id=session.session_id), **call)
    print("deleted")


def main() -> None:
    args = parse_args()
    image = args.image.read_bytes() if args.image else None
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    call = {"timeout": args.timeout, "metadata": metadata}
    sampling = common_pb2.SamplingParams(max_new_tokens=args.max_new_tokens)  # temperature 0: greedy

    with grpc.insecure_channel(args.address) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        info = stub.GetModelInfo(gateway_pb2.GetModelInfoRequest(), **call).info
        print(f"model: {info.architecture} vlm={info.is_vlm} context={info.context_length}")
        if not info.is_vlm:
            image = None
        request = gateway_pb2.GenerateRequest(messages=[user_message(args.prompt, image)], sampling=sampling)
        print(f"generate: {collect(stub.Generate(request, **call))!r}")
        turns = [user_message(args.prompt, image), user_message(args.followup, None)]
        chat_in_session(stub, turns, sampling, call)


if __name__ == "__main__":
    main()
