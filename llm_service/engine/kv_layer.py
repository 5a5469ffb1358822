"""A KV cache layer that appends in place: a decode step writes one column, not a copy of the cache."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """``DynamicLayer`` whose ``keys``/``values`` are prefix views of buffers with spare room.

    ``DynamicLayer.update`` concatenates, copying the whole layer every decode step (at 16 rows
    of 1,000 positions that is more bytes than the weights). Here ``update`` writes the new
    positions into the buffer's spare columns and re-slices. Anyone may still assign
    ``keys``/``values`` (the batch pads, filters and trims them): an assigned tensor that is not
    a prefix view of the buffer is copied into a fresh buffer at the next ``update``. ``crop``
    keeps a prefix view, so the buffer is reused.
    """

    def __init__(self, headroom: int = 64) -> None:
        super().__init__()
        self._headroom = headroom
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    @classmethod
    def over(cls, key_buffer: torch.Tensor, value_buffer: torch.Tensor, length: int) -> GrowingLayer:
        """A growing layer holding the first ``length`` positions of the given buffers."""
        out = cls()
        out.lazy_initialization(key_buffer, value_buffer)
        out._key_buffer, out._value_buffer = key_buffer, value_buffer
        out.keys, out.values = key_buffer[..., :length, :], value_buffer[..., :length, :]
        return out

    @property
    def buffers(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The buffers ``keys``/``values`` are prefix views of (None if they are not)."""
        keys, values = self._key_buffer, self._value_buffer
        if keys is None or values is None:
            return None
        if not (_is_prefix_view(self.keys, keys) and _is_prefix_view(self.values, values)):
            return None
        return keys, values

    @classmethod
    def adopt(cls, layer: DynamicLayer) -> GrowingLayer:
        """A growing layer holding ``layer``'s tensors (no copy until it needs room)."""
        out = cls()
        if layer.is_initialized and layer.keys is not None and layer.values is not None:
            out.lazy_initialization(layer.keys, layer.values)
            out.keys, out.values = layer.keys, layer.values
        return out

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        needed = length + key_states.shape[-2]
        keys, values = self._buffers(key_states, value_states, length, needed)
        keys[..., length:needed, :] = key_states
        values[..., length:needed, :] = value_states
        self.keys, self.values = keys[..., :needed, :], values[..., :needed, :]
        return self.keys, self.values

    def _buffers(
        self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, needed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The buffers to write into: the current ones if the cache is still their prefix view and
        they have room, else new ones (``needed`` plus headroom) holding the first ``length``."""
        keys, values = self._key_buffer, self._value_buffer
        if (
            keys is not None
            and values is not None
            and needed <= keys.shape[-2]
            and _is_prefix_view(self.keys, keys)
            and _is_prefix_view(self.values, values)
        ):
            return keys, values
        capacity = capacity_for(needed, self._headroom)
        keys = _grown(self.keys, key_states, capacity, length)
        values = _grown(self.values, value_states, capacity, length)
        self._key_buffer, self._value_buffer = keys, values
        return keys, values


def capacity_for(length: int, headroom: int = 64) -> int:
    """Positions a new buffer for ``length`` positions gets (room to grow without a copy)."""
    return length + max(headroom, length // 4)


def _is_prefix_view(view: torch.Tensor | None, buffer: torch.Tensor) -> bool:
    return (
        view is not None
        and view.data_ptr() == buffer.data_ptr()
        and view.shape[:-2] == buffer.shape[:-2]
        and view.shape[-1] == buffer.shape[-1]
        and view.stride() == buffer.stride()
    )


def _grown(old: torch.Tensor | None, like: torch.Tensor, capacity: int, length: int) -> torch.Tensor:
    """A ``like``-shaped buffer of ``capacity`` positions; the first ``length`` copied from ``old``."""
    batch, heads, _, dim = like.shape
    buffer = like.new_empty(batch, heads, capacity, dim)
    if length and old is not None:
        buffer[..., :length, :] = old[..., :length, :]
    return buffer
