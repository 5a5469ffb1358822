"""Prompt forms, image forms and GenerationConfig -> the exact ``vlm.v1`` protos the gateway takes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from PIL import Image
from vlm.v1 import common_pb2, gateway_pb2

from tandem.client import GenerationConfig, ImageId, InvalidArgument, NotFound, TandemClientError
from tandem.client.async_pipeline import build_chat_request, build_generate_request
from tandem.client.errors import error_for
from tandem.client.prompts import is_batch, to_messages
from tests.support import ROOT

USER = common_pb2.ROLE_USER
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_bytes(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def parts_summary(message: gateway_pb2.ChatMessage) -> list[str]:
    out = []
    for part in message.parts:
        if part.WhichOneof("kind") == "text":
            out.append(f"text:{part.text}")
        else:
            source = part.image
            kind = source.WhichOneof("source")
            value = getattr(source, kind)
            out.append(f"{kind}:{len(value)}" if kind == "data" else f"{kind}:{value}")
    return out


def test_plain_text_is_one_user_message() -> None:
    (message,) = to_messages("hello")
    assert message.role == USER
    assert parts_summary(message) == ["text:hello"]


def test_text_image_tuple_puts_images_first(tmp_path: Path) -> None:
    data = png_bytes()
    (message,) = to_messages(("describe", data))
    assert parts_summary(message) == [f"data:{len(data)}", "text:describe"]


def test_image_first_tuple_is_accepted_when_unambiguous() -> None:
    image = Image.new("RGB", (8, 8), "blue")
    (message,) = to_messages((image, "what color?"))
    assert message.parts[0].image.data.startswith(PNG_MAGIC)
    assert message.parts[0].image.media_type == "image/png"
    assert message.parts[1].text == "what color?"


def test_every_image_form(tmp_path: Path) -> None:
    data = png_bytes()
    path = tmp_path / "a.png"
    path.write_bytes(data)
    images = [
        Image.new("RGB", (8, 8)),
        data,
        bytearray(data),
        path,
        str(path),
        path.as_uri(),
        "https://example.com/cat.png",
        "data:image/png;base64,AAAA",
        ImageId("ab" * 32),
    ]
    (message,) = to_messages(("compare", images))
    summary = parts_summary(message)
    assert summary[1:6] == [f"data:{len(data)}"] * 5
    assert summary[6:] == [
        "url:https://example.com/cat.png",
        "url:data:image/png;base64,AAAA",
        f"image_id:{'ab' * 32}",
        "text:compare",
    ]


def test_openai_messages_with_image_url_parts() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}},
                {"type": "text", "text": "what is it?"},
            ],
        },
        {"role": "assistant", "content": "a cat"},
        {
            "role": "user",
            "content": [{"type": "image", "image": png_bytes()}, {"type": "text", "text": "and?"}],
        },
    ]
    result = to_messages(messages)
    assert [m.role for m in result] == [
        common_pb2.ROLE_SYSTEM,
        USER,
        common_pb2.ROLE_ASSISTANT,
        USER,
    ]
    assert parts_summary(result[1]) == ["url:https://x.test/a.png", "text:what is it?"]
    assert result[3].parts[0].image.data.startswith(PNG_MAGIC)


def test_content_parts_list_is_one_user_message() -> None:
    (message,) = to_messages([{"type": "text", "text": "hi"}])
    assert message.role == USER and parts_summary(message) == ["text:hi"]


def test_batch_is_told_apart_from_messages_by_shape() -> None:
    assert is_batch(["a", "b"])
    assert is_batch([("a", b"x"), [{"role": "user", "content": "hi"}]])
    assert is_batch([])
    assert not is_batch([{"role": "user", "content": "hi"}])
    assert not is_batch([{"type": "text", "text": "hi"}])
    assert not is_batch(("a", b"x"))
    assert not is_batch("a")


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        (42, "unsupported prompt"),
        (("a", "b", "c"), "tuple prompt"),
        (("a", 3.5), "unsupported image"),
        ([{"role": "tool", "content": "x"}], "unsupported role"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "unsupported content part"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "image_url"),
        ([{"role": "user", "content": 7}], "content must be"),
        (("x", "/no/such/file.png"), "cannot read image file"),
        (("x", b""), "empty"),
    ],
)
def test_bad_prompts_raise_invalid_argument(prompt: object, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle) as info:
        to_messages(prompt)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(info.value, ValueError)


def test_generate_request_carries_sampling_and_a_request_id() -> None:
    config = GenerationConfig(
        max_new_tokens=7, temperature=0.5, top_p=0.9, top_k=3, stop_words="END", stop_token_ids=[2], seed=11
    )
    request = build_generate_request("hi", config)
    assert len(request.request_id) == 32
    sampling = request.sampling
    assert (sampling.max_new_tokens, sampling.top_k, list(sampling.stop), list(sampling.stop_token_ids)) == (
        7,
        3,
        ["END"],
        [2],
    )
    assert sampling.temperature == pytest.approx(0.5) and sampling.top_p == pytest.approx(0.9)
    assert sampling.HasField("seed") and sampling.seed == 11
    assert config.random_seed == 11
    assert not sampling.ignore_eos
    assert build_generate_request("hi", GenerationConfig(ignore_eos=True)).sampling.ignore_eos


def test_default_config_is_greedy_with_server_default_length() -> None:
    sampling = GenerationConfig().to_pb()
    assert sampling.temperature == 0 and sampling.max_new_tokens == 0
    assert not sampling.HasField("seed")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"temperature": -1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"repetition_penalty": 0},
        {"seed": 1, "random_seed": 2},
        {"seed": -1},
        {"stop_token_ids": [-3]},
    ],
)
def test_generation_config_refuses_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        GenerationConfig(**kwargs)  # type: ignore[arg-type]


def test_chat_request_takes_one_user_turn() -> None:
    request = build_chat_request("s1", ("look", b"img"), GenerationConfig(), request_id="r1")
    assert (request.session_id, request.request_id) == ("s1", "r1")
    assert [p.WhichOneof("kind") for p in request.parts] == ["image", "text"]
    one_user = build_chat_request("s1", [{"role": "user", "content": "hi"}], GenerationConfig())
    assert one_user.parts[0].text == "hi"
    with pytest.raises(InvalidArgument, match="one user message"):
        build_chat_request("s1", [{"role": "system", "content": "x"}], GenerationConfig())


def test_errors_keep_code_and_details() -> None:
    error = error_for(grpc.StatusCode.NOT_FOUND, "session abc not found")
    assert isinstance(error, NotFound) and error.details == "session abc not found"
    assert "NOT_FOUND" in str(error)
    other = error_for(grpc.StatusCode.DATA_LOSS, "x")
    assert type(other) is TandemClientError and other.code == grpc.StatusCode.DATA_LOSS


def test_client_import_is_light() -> None:
    code = (
        "import sys, tandem; assert 'grpc' not in sys.modules;"
        "from tandem import pipeline, GenerationConfig;"
        "bad = [m for m in ('torch', 'PIL', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    root = ROOT
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "protos")])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)
