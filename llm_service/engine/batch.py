"""The running sequences' KV: one left-padded, batched ``DynamicCache`` and its attention mask."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from llm_service.engine.kv_layer import GrowingLayer

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


def _concatenate(parts: list[tuple[Any, int]], width: int) -> None:
    """Stack the rows of ``parts`` (cache, its width) into the first cache, left-padded to ``width``."""
    layer_lists = [_layers(cache) for cache, _ in parts]
    widths = [w for _, w in parts]
    for index, layer in enumerate(layer_lists[0]):
        keys = [
            _pad_left(layers[index].keys, width - w, -2)
            for layers, w in zip(layer_lists, widths, strict=True)
        ]
        values = [
            _pad_left(layers[index].values, width - w, -2)
            for layers, w in zip(layer_lists, widths, strict=True)
        ]
        layer.keys, layer.values = torch.cat(keys), torch.cat(values)


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
    ``extract`` copies one row's unpadded KV into a fresh cache (for the session cache).
    Only the scheduler thread touches a batch.
    """

    def __init__(self, new_cache: Callable[[], Any], device: torch.device) -> None:
        self._new_cache = new_cache
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
            _concatenate(caches, width)
        masks = [_pad_left(self.mask, width - self.width, -1)] if self.items else []
        masks += [self._right_aligned(lengths, width) for _, _, lengths in parts]
        self.cache, self.mask = _growing(caches[0][0]), torch.cat(masks)
        for items, _, lengths in parts:
            self.items += items
            self.lengths += lengths

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
        for layer in _layers(self.cache):
            layer.keys = layer.keys[index, :, trim:]
            layer.values = layer.values[index, :, trim:]
        self.mask = self.mask[index, trim:]
        self.items = [self.items[i] for i in rows]
        self.lengths = lengths

    def extract(self, row: int) -> Any:
        """A new single-row cache holding a copy of ``row``'s cached positions, unpadded."""
        start = self.width - self.lengths[row]
        out = self._new_cache()
        for index, layer in enumerate(_layers(self.cache)):
            out.update(layer.keys[row : row + 1, :, start:], layer.values[row : row + 1, :, start:], index)
        return out
