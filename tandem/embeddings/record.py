"""The embedding record: the proto value stored in Redis and handed over inline.

Layout: a serialised ``vlm.v1.EmbeddingRecord`` whose ``header`` (field 1) comes first and
whose ``data`` (field 15) comes last -- exactly what the protobuf serialiser writes for that
message, so any proto reader can parse it. Our reader parses only the small header and views
the tensor bytes in place (zero-copy), then validates everything against what the reader
expects. Any mismatch raises ``BadRecord``; callers treat it as a cache miss.

Nothing here unpickles or ``torch.load``s: bytes from outside only ever reach the protobuf
parser for the header and ``torch.frombuffer`` for a length-checked tensor.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import torch
from google.protobuf.message import DecodeError
from vlm.v1 import common_pb2

FORMAT_VERSION = 1
MAX_TOKENS = 1 << 16
MAX_HIDDEN = 1 << 16

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
    if header.format_version != FORMAT_VERSION:
        raise BadRecord(f"unknown format version {header.format_version}")
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
    if header.data_length != tokens * hidden * itemsize or data_length != header.data_length:
        raise BadRecord("data length does not match shape and dtype")


def to_tensor(header: common_pb2.EmbeddingHeader, data: bytes | memoryview) -> torch.Tensor:
    """A ``[num_tokens, hidden_size]`` tensor viewing ``data`` (call ``validate`` first).

    The tensor shares memory with ``data``, which is usually read-only: nobody writes to it.
    """
    flat = torch.frombuffer(data, dtype=_DTYPES[header.dtype])
    return flat.view(header.num_tokens, header.hidden_size)


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
    *, fingerprint: str, image_id: str, tensor: torch.Tensor, grid_thw: list[int] | None = None
) -> tuple[common_pb2.EmbeddingHeader, memoryview]:
    """Header and raw bytes for a ``[num_tokens, hidden]`` feature tensor."""
    dtype, shape, raw = tensor_bytes(tensor)
    header = common_pb2.EmbeddingHeader(
        format_version=FORMAT_VERSION,
        fingerprint=fingerprint,
        image_id=image_id,
        dtype=dtype,
        shape=shape,
        num_tokens=shape[0],
        hidden_size=shape[1],
        grid_thw=grid_thw or [],
        data_length=len(raw),
    )
    return header, raw
