"""The running sequences' KV: one left-padded, batched ``DynamicCache`` and its attention mask."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from llm_service.engine.kv_layer import GrowingLayer, capacity_for

T = TypeVar("T")


def _layers(cache: Any) -> list[Any]:
    layers = list(cache.layers)
    for layer in layers:
        if not isinstance(layer, DynamicLayer) or isinstance(layer, DynamicSlidingWindowLayer):
            raise TypeError(f"batched decoding needs full-attention DynamicLayer caches, not {type(layer)}")
    return layers


def _pad_left(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Zero-pad ``n`` entries in front along ``dim`` (negative dims only)."""
    if n == 0:
        return x
    pad = [0, 0] * (-dim - 1) + [n, 0]
    return F.pad(x, pad)


def _stacked(parts: list[tuple[torch.Tensor, int]], width: int) -> torch.Tensor:
    """One buffer [rows, heads, capacity, dim] with the rows of ``parts`` (a tensor of exactly
    its width columns, that width) one under another, right-aligned to ``width``, zeros in front:
    each part is copied once, straight into the buffer that later decode steps append to."""
    first = parts[0][0]
    rows = sum(tensor.shape[0] for tensor, _ in parts)
    out = first.new_empty(rows, first.shape[1], capacity_for(width), first.shape[3])
    row = 0
    for tensor, w in parts:
        n = tensor.shape[0]
        out[row : row + n, :, : width - w].zero_()
        out[row : row + n, :, width - w : width] = tensor
        row += n
    return out


def _kept(tensor: torch.Tensor, rows: list[int], start: int) -> torch.Tensor:
    """A buffer with ``tensor``'s ``rows`` from column ``start`` on (one copy, row by row)."""
    width = tensor.shape[2] - start
    out = tensor.new_empty(len(rows), tensor.shape[1], capacity_for(width), tensor.shape[3])
    for j, row in enumerate(rows):
        out[j, :, :width] = tensor[row, :, start:]
    return out


def _compacted(buffer: torch.Tensor, rows: list[int], width: int) -> torch.Tensor:
    """``buffer`` with ``rows`` (ascending) moved up in place to the first ``len(rows)`` rows;
    only rows after the first dropped one are copied."""
    for j, row in enumerate(rows):
        if row != j:
            buffer[j, :, :width] = buffer[row, :, :width]
    return buffer[: len(rows)]


def _growing(cache: Any) -> Any:
    """``cache`` with its layers appending in place (see ``GrowingLayer``)."""
    for index, layer in enumerate(_layers(cache)):
        if not isinstance(layer, GrowingLayer):
            cache.layers[index] = GrowingLayer.adopt(layer)
    return cache


class DecodeBatch(Generic[T]):
    """Rows of running sequences that one forward pass decodes together.

    Invariant: row ``i`` holds ``lengths[i]`` cached positions right-aligned in the cache's
    ``width`` columns; the columns in front are padding (zero K/V, 0 in ``mask``), and the longest
    row has none. ``add`` appends rows (re-padding everyone to the new width, TGI's
    ``concatenate``), ``keep`` drops rows and trims columns only padding uses (``filter``),
    ``row_kv`` copies a range of one row's unpadded KV (for the prefix cache).
    Only the scheduler thread touches a batch.
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self.items: list[T] = []
        self.lengths: list[int] = []
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def add(self, parts: list[tuple[list[T], Any, list[int]]]) -> None:
        """Append groups of rows: (items, their cache with rows right-aligned, cached lengths)."""
        if not parts:
            return
        caches = [(self.cache, self.width)] if self.items else []
        caches += [(cache, max(lengths)) for _, cache, lengths in parts]
        width = max(w for _, w in caches)
        if len(caches) > 1:
            self._stack(caches, width)
        masks = [_pad_left(self.mask, width - self.width, -1)] if self.items else []
        masks += [self._right_aligned(lengths, width) for _, _, lengths in parts]
        self.cache, self.mask = _growing(caches[0][0]), torch.cat(masks)
        for items, _, lengths in parts:
            self.items += items
            self.lengths += lengths

    @staticmethod
    def _stack(caches: list[tuple[Any, int]], width: int) -> None:
        """Every cache's rows, left-padded to ``width``, into the first cache's layers."""
        layer_lists = [_layers(cache) for cache, _ in caches]
        widths = [w for _, w in caches]
        for index in range(len(layer_lists[0])):
            parts = [layers[index] for layers in layer_lists]
            keys = _stacked([(p.keys, w) for p, w in zip(parts, widths, strict=True)], width)
            values = _stacked([(p.values, w) for p, w in zip(parts, widths, strict=True)], width)
            caches[0][0].layers[index] = GrowingLayer.over(keys, values, width)

    def _right_aligned(self, lengths: list[int], width: int) -> torch.Tensor:
        starts = width - torch.tensor(lengths, dtype=torch.long, device=self._device)
        return (torch.arange(width, device=self._device)[None, :] >= starts[:, None]).long()

    def next_mask(self) -> torch.Tensor:
        """The attention mask for a decode step: every row attends to one more (real) position."""
        return torch.cat([self.mask, torch.ones(len(self), 1, dtype=torch.long, device=self._device)], dim=1)

    def advance(self, cache: Any, mask: torch.Tensor) -> None:
        """Record a decode step's result (one more cached position in every row)."""
        self.cache, self.mask = cache, mask
        self.lengths = [length + 1 for length in self.lengths]

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order); trim the padding columns no kept row needs."""
        if len(rows) == len(self) and rows == list(range(len(self))):
            return
        if not rows:
            self.items, self.lengths, self.cache = [], [], None
            self.mask = torch.zeros(0, 0, dtype=torch.long, device=self._device)
            return
        index = torch.tensor(rows, dtype=torch.long, device=self._device)
        lengths = [self.lengths[i] for i in rows]
        trim = self.width - max(lengths)
        for number, layer in enumerate(_layers(self.cache)):
            self.cache.layers[number] = self._kept_layer(layer, rows, trim)
        self.mask = self.mask[index, trim:]
        self.items = [self.items[i] for i in rows]
        self.lengths = lengths

    def _kept_layer(self, layer: Any, rows: list[int], trim: int) -> GrowingLayer:
        """``layer`` with only ``rows`` from column ``trim`` on: moved up in place when nothing is
        trimmed and the rows keep their order, else copied once into new buffers."""
        buffers = layer.buffers if isinstance(layer, GrowingLayer) else None
        if buffers is not None and trim == 0 and rows == sorted(rows):
            keys, values = (_compacted(buffer, rows, self.width) for buffer in buffers)
            return GrowingLayer.over(keys, values, self.width)
        keys, values = _kept(layer.keys, rows, trim), _kept(layer.values, rows, trim)
        return GrowingLayer.over(keys, values, self.width - trim)

    def row_kv(self, row: int, start: int, end: int) -> torch.Tensor:
        """A copy of ``row``'s cached positions ``start..end`` (0: its first real position) in
        every layer: [layers, 2 (keys, values), kv heads, end - start, head dim]."""
        first = self.width - self.lengths[row]
        parts = [
            tensor[row, :, first + start : first + end]
            for layer in _layers(self.cache)
            for tensor in (layer.keys, layer.values)
        ]
        stacked = torch.stack(parts)
        return stacked.view(-1, 2, *stacked.shape[1:])
