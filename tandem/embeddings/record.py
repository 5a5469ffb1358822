"""The embedding record: the proto value stored in Redis and handed over inline.

Layout: a serialised ``vlm.v1.EmbeddingRecord`` whose ``header`` (field 1) comes first and
whose ``data`` (field 15) comes last -- exactly what the protobuf serialiser writes for that
message, so any proto reader can parse it. Our reader parses only the small header and views
the tensor bytes in place (zero-copy), then validates everything against what the reader
expects. Any mismatch raises ``BadRecord``; callers treat it as a cache miss.

Versions (``header.format_version``): 1 holds one tensor, the ``[num_tokens, hidden_size]``
features; 2 adds named ``extras`` tensors (e.g. Qwen3-VL's deepstack features), whose bytes follow
the features' in ``data`` in header order, and named integer ``metadata``. A writer uses version 1
whenever a record has neither, so every single-tensor family's records stay readable by readers
that know only version 1. A reader refuses a version it does not know, or a version 1 record with
extras or metadata (``BadRecord``: a cache miss, so the embedding is recomputed, never misread).

Nothing here unpickles or ``torch.load``s: bytes from outside only ever reach the protobuf
parser for the header and ``torch.frombuffer`` for a length-checked tensor.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from google.protobuf.message import DecodeError
from vlm.v1 import common_pb2

FORMAT_VERSION = 1  # a record with the features only
EXTRAS_VERSION = 2  # a record with named extra tensors and/or metadata
VERSIONS = (FORMAT_VERSION, EXTRAS_VERSION)
MAX_TOKENS = 1 << 16
MAX_HIDDEN = 1 << 16
MAX_EXTRAS = 16  # named tensors, and separately metadata entries, per record
MAX_EXTRA_DIMS = 4
MAX_EXTRA_ELEMENTS = 1 << 32

HEADER_BYTES = 4096  # a prefix of a record this long holds its whole header (and the data tag)

_HEADER_TAG = 0x0A  # field 1, wire type 2
_DATA_TAG = 0x7A  # field 15, wire type 2

_DTYPES: dict[common_pb2.DType, torch.dtype] = {
    common_pb2.DTYPE_FLOAT32: torch.float32,
    common_pb2.DTYPE_FLOAT16: torch.float16,
    common_pb2.DTYPE_BFLOAT16: torch.bfloat16,
}
_PB_DTYPES = {v: k for k, v in _DTYPES.items()}
_ITEMSIZES = {k: v.itemsize for k, v in _DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little endian
    raise ImportError("tandem embedding records assume a little-endian host")


class BadRecord(ValueError):
    """A value that is not a valid embedding record for this reader."""


@dataclass(frozen=True)
class Expected:
    """What a reader requires of a record."""

    fingerprint: str
    hidden_size: int
    image_id: str | None = None
    num_tokens: int | None = None
    # The names of the extra tensors the reader's family needs, exactly (None: any).
    extras: tuple[str, ...] | None = None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while pos < len(buf) and shift < 64:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise BadRecord("truncated varint")


def tensor_bytes(tensor: torch.Tensor) -> tuple[common_pb2.DType, list[int], memoryview]:
    """(proto dtype, shape, raw little-endian bytes) of a CPU tensor, without a copy if contiguous."""
    if tensor.dtype not in _PB_DTYPES:
        raise ValueError(f"unsupported embedding dtype {tensor.dtype}")
    flat = tensor.detach().to("cpu").contiguous()
    raw = flat.view(torch.uint8).reshape(-1).numpy()
    return _PB_DTYPES[flat.dtype], list(flat.shape), raw.data.cast("B")


def encode(header: common_pb2.EmbeddingHeader, data: bytes | memoryview) -> bytes:
    """Serialise one record (header first, data last)."""
    head = header.SerializeToString()
    return b"".join(
        (bytes([_HEADER_TAG]), _varint(len(head)), head, bytes([_DATA_TAG]), _varint(len(data)), data)
    )


def _parse_head(buf: memoryview) -> tuple[common_pb2.EmbeddingHeader, int, int]:
    """(header, offset of the data bytes, data length the record declares) from its first bytes."""
    if len(buf) < 4 or buf[0] != _HEADER_TAG:
        raise BadRecord("not an embedding record")
    head_len, pos = _read_varint(buf, 1)
    if pos + head_len >= len(buf):
        raise BadRecord("truncated header")
    header = common_pb2.EmbeddingHeader()
    try:
        header.ParseFromString(bytes(buf[pos : pos + head_len]))  # the small header only
    except DecodeError as exc:
        raise BadRecord("corrupt header") from exc
    pos += head_len
    if buf[pos] != _DATA_TAG:
        raise BadRecord("data field missing")
    data_len, pos = _read_varint(buf, pos + 1)
    return header, pos, data_len


def split(value: bytes | memoryview) -> tuple[common_pb2.EmbeddingHeader, memoryview]:
    """Parse the header and view the data bytes of ``value`` in place."""
    buf = memoryview(value)
    header, pos, data_len = _parse_head(buf)
    if pos + data_len != len(buf):
        raise BadRecord("data length does not match the value length")
    return header, buf[pos:]


def read_header(prefix: bytes | memoryview, value_length: int) -> tuple[common_pb2.EmbeddingHeader, int]:
    """Header and data length of a record from its first bytes (``HEADER_BYTES`` are enough).

    ``value_length`` is the length of the whole stored value (Redis ``STRLEN``): the layout must
    agree with it. ``validate`` the header with the returned data length next; the tensor bytes
    themselves are not read (whoever uses them reads and validates the whole value).
    """
    header, pos, data_len = _parse_head(memoryview(prefix))
    if pos + data_len != value_length:
        raise BadRecord("data length does not match the value length")
    return header, data_len


def validate(header: common_pb2.EmbeddingHeader, data_length: int, expected: Expected) -> None:
    """Raise ``BadRecord`` unless the header is consistent and matches ``expected``."""
    if header.format_version not in VERSIONS:
        raise BadRecord(f"unknown format version {header.format_version}")
    if header.format_version == FORMAT_VERSION and (header.extras or header.metadata):
        raise BadRecord("a version 1 record has no extras or metadata")
    if header.fingerprint != expected.fingerprint:
        raise BadRecord("fingerprint mismatch")
    if expected.image_id is not None and header.image_id != expected.image_id:
        raise BadRecord("image id mismatch")
    itemsize = _ITEMSIZES.get(header.dtype)
    if itemsize is None:
        raise BadRecord("unknown dtype")
    shape = header.shape
    if len(shape) != 2:
        raise BadRecord("bad shape")
    tokens, hidden = shape
    if not 0 < tokens <= MAX_TOKENS or not 0 < hidden <= MAX_HIDDEN:
        raise BadRecord("bad shape")
    if tokens != header.num_tokens or hidden != header.hidden_size:
        raise BadRecord("shape disagrees with token count or hidden size")
    if hidden != expected.hidden_size:
        raise BadRecord("hidden size mismatch")
    if expected.num_tokens is not None and tokens != expected.num_tokens:
        raise BadRecord("token count mismatch")
    grid = header.grid_thw
    if grid and math.prod(grid) <= 0:
        raise BadRecord("bad grid")
    extra_bytes = _check_extras(header, expected)
    if header.data_length != tokens * hidden * itemsize + extra_bytes or data_length != header.data_length:
        raise BadRecord("data length does not match shape and dtype")


def _check_extras(header: common_pb2.EmbeddingHeader, expected: Expected) -> int:
    """The byte length of the extra tensors, once their names, dtypes and shapes are sound."""
    names = tuple(spec.name for spec in header.extras)
    keys = [entry.name for entry in header.metadata]
    if len(names) > MAX_EXTRAS or len(keys) > MAX_EXTRAS:
        raise BadRecord("too many extras or metadata entries")
    if len(set(names)) != len(names) or len(set(keys)) != len(keys) or not all(names) or not all(keys):
        raise BadRecord("extras and metadata need unique, non-empty names")
    if expected.extras is not None and sorted(names) != sorted(expected.extras):
        raise BadRecord(f"extras {sorted(names)} are not the expected {sorted(expected.extras)}")
    total = 0
    for spec in header.extras:
        itemsize = _ITEMSIZES.get(spec.dtype)
        if itemsize is None:
            raise BadRecord(f"extra {spec.name!r}: unknown dtype")
        if not 0 < len(spec.shape) <= MAX_EXTRA_DIMS or min(spec.shape) < 1:
            raise BadRecord(f"extra {spec.name!r}: bad shape")
        elements = math.prod(spec.shape)
        if elements > MAX_EXTRA_ELEMENTS:
            raise BadRecord(f"extra {spec.name!r}: too large")
        total += elements * itemsize
    return total


def to_tensor(header: common_pb2.EmbeddingHeader, data: bytes | memoryview) -> torch.Tensor:
    """A ``[num_tokens, hidden_size]`` tensor viewing ``data`` (call ``validate`` first).

    The tensor shares memory with ``data``, which is usually read-only: nobody writes to it.
    """
    count = header.num_tokens * header.hidden_size
    flat = torch.frombuffer(data, dtype=_DTYPES[header.dtype], count=count)
    return flat.view(header.num_tokens, header.hidden_size)


def extra_tensors(header: common_pb2.EmbeddingHeader, data: bytes | memoryview) -> dict[str, torch.Tensor]:
    """The extra tensors by name, each viewing ``data`` (call ``validate`` first)."""
    offset = header.num_tokens * header.hidden_size * _ITEMSIZES[header.dtype]
    out: dict[str, torch.Tensor] = {}
    for spec in header.extras:
        count = math.prod(spec.shape)
        flat = torch.frombuffer(data, dtype=_DTYPES[spec.dtype], count=count, offset=offset)
        out[spec.name] = flat.view(*spec.shape)
        offset += count * _ITEMSIZES[spec.dtype]
    return out


def metadata_of(header: common_pb2.EmbeddingHeader) -> dict[str, tuple[int, ...]]:
    """The record's named integers."""
    return {entry.name: tuple(entry.values) for entry in header.metadata}


def payload(features: torch.Tensor, extras: Mapping[str, torch.Tensor] | None = None) -> memoryview | bytes:
    """The ``data`` bytes of a record: the features' (no copy when they are contiguous), then
    each extra tensor's in order (joined: one copy)."""
    _, _, raw = tensor_bytes(features)
    if not extras:
        return raw
    return b"".join([raw, *(tensor_bytes(tensor)[2] for tensor in extras.values())])


def _silence_readonly_buffer_warning() -> None:
    """Spend torch's warn-once about read-only buffers here, instead of in a request.

    ``torch.frombuffer`` warns once per process that a read-only buffer gives a tensor nobody
    may write to; every tensor ``to_tensor`` returns is exactly that. Wrapping each call in
    ``warnings.catch_warnings`` would cost more than the whole decode.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.frombuffer(b"\0\0", dtype=torch.uint8)


_silence_readonly_buffer_warning()


def make_header(
    *,
    fingerprint: str,
    image_id: str,
    tensor: torch.Tensor,
    grid_thw: list[int] | None = None,
    extras: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Sequence[int]] | None = None,
) -> tuple[common_pb2.EmbeddingHeader, memoryview | bytes]:
    """Header and ``data`` bytes for ``[num_tokens, hidden]`` features and optional named extra
    tensors and metadata (``header_of``)."""
    header = header_of(
        fingerprint=fingerprint, image_id=image_id, tensor=tensor, grid_thw=grid_thw, extras=extras,
        metadata=metadata,
    )  # fmt: skip
    return header, payload(tensor, extras)


def header_of(
    *,
    fingerprint: str,
    image_id: str,
    tensor: torch.Tensor,
    grid_thw: list[int] | None = None,
    extras: Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Sequence[int]] | None = None,
) -> common_pb2.EmbeddingHeader:
    """The header alone (no bytes are copied): version 2 when there are extras or metadata."""
    specs = [_spec(name, value) for name, value in (extras or {}).items()]
    entries = [common_pb2.NamedInts(name=k, values=list(v)) for k, v in (metadata or {}).items()]
    features = _spec("", tensor)
    if len(features.shape) != 2:
        raise ValueError(f"features must be [num_tokens, hidden], got {list(features.shape)}")
    tensors = [tensor, *(extras or {}).values()]
    return common_pb2.EmbeddingHeader(
        format_version=EXTRAS_VERSION if specs or entries else FORMAT_VERSION,
        fingerprint=fingerprint,
        image_id=image_id,
        dtype=features.dtype,
        shape=features.shape,
        num_tokens=features.shape[0],
        hidden_size=features.shape[1],
        grid_thw=grid_thw or [],
        data_length=sum(t.numel() * t.element_size() for t in tensors),
        extras=specs,
        metadata=entries,
    )


def _spec(name: str, tensor: torch.Tensor) -> common_pb2.TensorSpec:
    if tensor.dtype not in _PB_DTYPES:
        raise ValueError(f"unsupported embedding dtype {tensor.dtype}")
    return common_pb2.TensorSpec(name=name, dtype=_PB_DTYPES[tensor.dtype], shape=list(tensor.shape))
