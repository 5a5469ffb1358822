"""The embedding record codec: round trips, wire compatibility, zero copy, hostile values, fuzzing."""

from __future__ import annotations

import contextlib
import pickle
import time
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vlm.v1 import common_pb2

from tandem.embeddings import record
from tandem.embeddings.cache import Embedding, decode_inline, image_id_of

FINGERPRINT = "f" * 32
IMAGE_ID = image_id_of(b"an image")
HIDDEN = 64


def make_value(dtype: torch.dtype = torch.bfloat16, tokens: int = 16, hidden: int = HIDDEN) -> bytes:
    features = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(0)).to(dtype)
    header, raw = record.make_header(fingerprint=FINGERPRINT, image_id=IMAGE_ID, tensor=features)
    return record.encode(header, raw)


def decode(value: bytes | memoryview, hidden: int = HIDDEN) -> torch.Tensor:
    header, data = record.split(value)
    record.validate(header, len(data), record.Expected(FINGERPRINT, hidden, IMAGE_ID))
    return record.to_tensor(header, data)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_exact(dtype: torch.dtype) -> None:
    features = torch.randn(16, HIDDEN).to(dtype)
    header, raw = record.make_header(
        fingerprint=FINGERPRINT, image_id=IMAGE_ID, tensor=features, grid_thw=[1, 4, 4]
    )
    header_back, data = record.split(record.encode(header, raw))
    assert header_back == header
    assert list(header_back.grid_thw) == [1, 4, 4]
    record.validate(header_back, len(data), record.Expected(FINGERPRINT, HIDDEN, IMAGE_ID, 16))
    back = record.to_tensor(header_back, data)
    assert back.dtype == dtype
    assert back.shape == (16, HIDDEN)
    assert torch.equal(back, features)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_full_protobuf_parser_reads_our_encoding(dtype: torch.dtype) -> None:
    """Our hand-written framing is exactly what protobuf writes: both directions agree."""
    features = torch.randn(4, HIDDEN).to(dtype)
    header, raw = record.make_header(fingerprint=FINGERPRINT, image_id=IMAGE_ID, tensor=features)
    ours = record.encode(header, raw)
    parsed = common_pb2.EmbeddingRecord()
    parsed.ParseFromString(ours)
    assert parsed.header == header
    assert parsed.data == bytes(raw)
    theirs = common_pb2.EmbeddingRecord(header=header, data=bytes(raw)).SerializeToString()
    assert theirs == ours
    assert torch.equal(decode(theirs), features)


def test_decode_is_zero_copy() -> None:
    value = make_value(tokens=576, hidden=HIDDEN)
    base = np.frombuffer(value, dtype=np.uint8).ctypes.data
    tensor = decode(value)
    assert base <= tensor.data_ptr() < base + len(value)
    assert tensor.data_ptr() + tensor.numel() * tensor.element_size() == base + len(value)


def test_embedding_to_record_and_inline_decode() -> None:
    features = torch.randn(16, HIDDEN).to(torch.float16)
    header, _ = record.make_header(fingerprint=FINGERPRINT, image_id=IMAGE_ID, tensor=features)
    header.num_chunks = 3  # a chunked cache header must not leak into the inline record
    inline = Embedding(header, features).to_record()
    back = decode_inline(inline, record.Expected(FINGERPRINT, HIDDEN, IMAGE_ID, 16))
    assert torch.equal(back.features, features)
    assert back.header.num_chunks == 0
    assert "image_id=" in repr(back) and str(features[0, 0].item()) not in repr(back)


def test_inline_decode_refuses_chunked_records() -> None:
    features = torch.randn(4, HIDDEN)
    header, raw = record.make_header(fingerprint=FINGERPRINT, image_id=IMAGE_ID, tensor=features)
    header.num_chunks = 1
    with pytest.raises(record.BadRecord, match="chunked"):
        decode_inline(record.encode(header, raw), record.Expected(FINGERPRINT, HIDDEN))


def test_unsupported_tensor_dtype_is_refused_at_write() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        record.make_header(
            fingerprint=FINGERPRINT, image_id=IMAGE_ID, tensor=torch.zeros(2, 2, dtype=torch.int64)
        )


def _with_header(**changes: object) -> bytes:
    """A valid value whose header has ``changes`` applied (data untouched)."""
    header, data = record.split(make_value())
    for name, value in changes.items():
        if isinstance(value, list):
            getattr(header, name)[:] = value
        else:
            setattr(header, name, value)
    return record.encode(header, data)


def _with_metadata() -> bytes:
    """A valid version 1 value whose header also carries metadata (only version 2 may)."""
    header, data = record.split(make_value())
    header.metadata.add(name="image_size", values=[1, 2])
    return record.encode(header, data)


HOSTILE = {
    "wrong data length": lambda: make_value()[:-2],
    "extra trailing bytes": lambda: make_value() + b"\x00\x00",
    "truncated in the header": lambda: make_value()[:20],
    "truncated varint": lambda: b"\x0a\xff\xff\xff",
    "empty": lambda: b"",
    "pickle blob": lambda: pickle.dumps({"features": [1.0, 2.0]}),
    "torch.save-like zip": lambda: b"PK\x03\x04" + b"\x00" * 64,
    "unknown dtype": lambda: _with_header(dtype=42),
    "unspecified dtype": lambda: _with_header(dtype=0),
    "negative dim": lambda: _with_header(shape=[-16, HIDDEN]),
    "huge dims": lambda: _with_header(shape=[1 << 40, 1 << 40], num_tokens=0),
    "three dims": lambda: _with_header(shape=[16, HIDDEN, 1]),
    "zero tokens": lambda: _with_header(shape=[0, HIDDEN], num_tokens=0),
    "shape disagrees with num_tokens": lambda: _with_header(num_tokens=15),
    "wrong hidden size": lambda: _with_header(
        shape=[32, HIDDEN // 2], num_tokens=32, hidden_size=HIDDEN // 2
    ),
    "wrong fingerprint": lambda: _with_header(fingerprint="0" * 32),
    "wrong image id": lambda: _with_header(image_id=image_id_of(b"another")),
    "unknown version": lambda: _with_header(format_version=3),
    "unset version": lambda: _with_header(format_version=0),
    "version 1 with metadata": lambda: _with_metadata(),
    "lying data_length": lambda: _with_header(data_length=1),
    "bad grid": lambda: _with_header(grid_thw=[1, 0, 4]),
    "header field but no data field": lambda: b"\x0a\x02\x08\x01\x0a\x00",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_values_raise_bad_record(name: str) -> None:
    value = HOSTILE[name]()
    with pytest.raises(record.BadRecord):
        decode(value)


def make_extras_value(version: int | None = None, **extras: torch.Tensor) -> bytes:
    features = torch.randn(4, HIDDEN)
    extras = extras or {"deepstack": torch.randn(2, 4, HIDDEN)}
    header, raw = record.make_header(
        fingerprint=FINGERPRINT, image_id=IMAGE_ID, tensor=features, grid_thw=[1, 4, 4], extras=extras
    )
    if version is not None:
        header.format_version = version
    return record.encode(header, raw)


def test_a_single_tensor_record_stays_version_1() -> None:
    """Readers that only know version 1 keep reading every single-tensor family's records."""
    header, _ = record.split(make_value())
    assert header.format_version == record.FORMAT_VERSION == 1
    assert not header.extras and not header.metadata


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extras_and_metadata_round_trip_exactly(dtype: torch.dtype) -> None:
    features = torch.randn(4, HIDDEN).to(dtype)
    extras = {"deepstack": torch.randn(3, 4, HIDDEN).to(dtype), "scale": torch.randn(4).to(torch.float16)}
    header, raw = record.make_header(
        fingerprint=FINGERPRINT, image_id=IMAGE_ID, tensor=features, extras=extras,
        metadata={"image_size": [56, 112]},
    )  # fmt: skip
    value = record.encode(header, raw)
    parsed = common_pb2.EmbeddingRecord()
    parsed.ParseFromString(value)  # still a plain EmbeddingRecord to any proto reader
    assert parsed.header == header and header.format_version == record.EXTRAS_VERSION
    back_header, data = record.split(value)
    record.validate(
        back_header, len(data), record.Expected(FINGERPRINT, HIDDEN, IMAGE_ID, 4, ("scale", "deepstack"))
    )
    embedding = Embedding.from_record(back_header, data)
    assert torch.equal(embedding.features, features)
    assert list(embedding.extras) == ["deepstack", "scale"]
    assert all(torch.equal(embedding.extras[k], v) for k, v in extras.items())
    assert embedding.metadata == {"image_size": (56, 112)}
    assert embedding.to_record() == value
    assert decode_inline(value, record.Expected(FINGERPRINT, HIDDEN, IMAGE_ID)).extras.keys() == extras.keys()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (lambda: make_extras_value(version=1), "version 1"),
        (lambda: make_extras_value(version=3), "unknown format version"),
        (lambda: make_extras_value(), "extras"),  # read as a family without extras
    ],
    ids=["version 1 with extras", "newer version", "unexpected extras"],
)
def test_records_a_reader_cannot_use_are_refused(value, message: str) -> None:  # type: ignore[no-untyped-def]
    header, data = record.split(value())
    with pytest.raises(record.BadRecord, match=message):
        record.validate(header, len(data), record.Expected(FINGERPRINT, HIDDEN, IMAGE_ID, extras=()))


def test_a_record_missing_an_expected_extra_is_refused() -> None:
    header, data = record.split(make_value())
    with pytest.raises(record.BadRecord, match="extras"):
        record.validate(
            header, len(data), record.Expected(FINGERPRINT, HIDDEN, IMAGE_ID, extras=("deepstack",))
        )


def _with_extra_spec(**changes: object) -> bytes:
    header, data = record.split(make_extras_value())
    spec = header.extras[0]
    for name, value in changes.items():
        if isinstance(value, list):
            getattr(spec, name)[:] = value
        else:
            setattr(spec, name, value)
    return record.encode(header, data)


def _renamed(value: bytes, name: str) -> bytes:
    """``value`` with its last extra tensor renamed to ``name``."""
    header, data = record.split(value)
    header.extras[-1].name = name
    return record.encode(header, data)


EXTRA_HOSTILE = {
    "unknown extra dtype": lambda: _with_extra_spec(dtype=9),
    "zero extra dim": lambda: _with_extra_spec(shape=[0, 4, HIDDEN]),
    "negative extra dim": lambda: _with_extra_spec(shape=[-2, 4, HIDDEN]),
    "five extra dims": lambda: _with_extra_spec(shape=[1, 1, 2, 4, HIDDEN]),
    "huge extra": lambda: _with_extra_spec(shape=[1 << 30, 1 << 30]),
    "extra shape lies about length": lambda: _with_extra_spec(shape=[1, 4, HIDDEN]),
    "empty extra name": lambda: _with_extra_spec(name=""),
    "duplicate extra names": lambda: _renamed(make_extras_value(a=torch.zeros(2), b=torch.zeros(2)), "a"),
    "extras truncated": lambda: make_extras_value()[:-4],
}


@pytest.mark.parametrize("name", sorted(EXTRA_HOSTILE))
def test_hostile_extras_raise_bad_record(name: str) -> None:
    value = EXTRA_HOSTILE[name]()
    with pytest.raises(record.BadRecord):
        header, data = record.split(value)
        record.validate(header, len(data), record.Expected(FINGERPRINT, HIDDEN))


def test_expected_token_count_is_enforced() -> None:
    header, data = record.split(make_value(tokens=16))
    with pytest.raises(record.BadRecord, match="token count"):
        record.validate(header, len(data), record.Expected(FINGERPRINT, HIDDEN, IMAGE_ID, num_tokens=17))


def test_bad_record_is_a_value_error() -> None:
    """Callers that only know ValueError still catch it."""
    assert issubclass(record.BadRecord, ValueError)


def _decode_any(value: bytes) -> None:
    """Decode ``value``; only ``BadRecord`` may escape, and never after more than 50 ms."""
    started = time.perf_counter()
    try:
        header, data = record.split(value)
        record.validate(header, len(data), record.Expected(FINGERPRINT, HIDDEN))
        record.to_tensor(header, data)
    finally:
        assert time.perf_counter() - started < 0.05


# Time is bounded per decode in _decode_any (hypothesis' own deadline flakes on a loaded machine).
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_only_raise_bad_record(value: bytes) -> None:
    with contextlib.suppress(record.BadRecord):
        _decode_any(value)


VALID = make_value(tokens=2, hidden=HIDDEN)


@FUZZ
@given(
    st.integers(min_value=0, max_value=len(VALID) - 1),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=0, max_value=len(VALID)),
)
def test_fuzz_mutated_records_only_raise_bad_record(position: int, byte: int, cut: int) -> None:
    mutated = bytearray(VALID)
    mutated[position] = byte
    for value in (bytes(mutated), bytes(mutated[:cut])):
        with contextlib.suppress(record.BadRecord):
            _decode_any(value)


@FUZZ
@given(
    dtype=st.integers(min_value=-2, max_value=8),
    shape=st.lists(st.integers(min_value=-(1 << 62), max_value=1 << 62), max_size=4),
    num_tokens=st.integers(min_value=0, max_value=(1 << 32) - 1),
    hidden=st.integers(min_value=0, max_value=(1 << 32) - 1),
    data_length=st.integers(min_value=0, max_value=(1 << 64) - 1),
    grid=st.lists(st.integers(min_value=0, max_value=(1 << 32) - 1), max_size=3),
    payload=st.binary(max_size=256),
)
def test_fuzz_header_fields_only_raise_bad_record(
    dtype: int,
    shape: list[int],
    num_tokens: int,
    hidden: int,
    data_length: int,
    grid: list[int],
    payload: bytes,
) -> None:
    header = common_pb2.EmbeddingHeader(
        format_version=record.FORMAT_VERSION,
        fingerprint=FINGERPRINT,
        image_id=IMAGE_ID,
        shape=shape,
        num_tokens=num_tokens,
        hidden_size=hidden,
        grid_thw=grid,
        data_length=data_length,
    )
    header.dtype = dtype  # type: ignore[assignment]  # open enum: unknown numbers are kept
    with contextlib.suppress(record.BadRecord):
        _decode_any(record.encode(header, payload))


def test_decode_emits_no_warning() -> None:
    """The read-only-buffer warning of torch.frombuffer never reaches a request's log."""
    value = make_value()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode(value)
        decode(memoryview(value))
    assert [str(w.message) for w in caught] == []
