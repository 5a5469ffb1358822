"""KV reuse across requests and sessions: blocks of positions, content-addressed, LRU by bytes.

A block holds the KV of up to ``block_size`` consecutive positions of some sequence. Its digest
chains the digest of the block before it (its parent) with its own position keys (token ids; at
image positions the negative keys made from (image_id, offset)) and position ids (all M-RoPE
dims), so equal digests mean an equal prefix up to the block's end: the same tokens, the same
images at the same places, the same positions, hence the same KV. The first block's parent is a
digest of the tenant: no tenant ever hits (or learns, through ``cached_tokens``, the length of)
another tenant's prefix.

Whole blocks are found by digest; below them, a prompt may also use the first positions of any
child of its last whole block that agree with it (a block holding the tail of a shorter sequence,
or a whole block that diverges part-way), so a hit is as long as the longest cached prefix, not
only its whole blocks.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

DIGEST_BYTES = 16
_VERSION = b"tandem-prefix-v1\0"

Item = tuple[int, tuple[int, ...]]
"""One position as the cache compares it: (key, its position ids in every dim)."""


def root_digest(tenant: str) -> bytes:
    """The parent of a tenant's first blocks."""
    return hashlib.blake2b(_VERSION + tenant.encode(), digest_size=DIGEST_BYTES).digest()


def _digest(parent: bytes, items: Sequence[Item]) -> bytes:
    return hashlib.blake2b(parent + repr(tuple(items)).encode(), digest_size=DIGEST_BYTES).digest()


def items_of(keys: Sequence[int], positions: torch.Tensor) -> list[Item]:
    """(key, position ids) per position; ``positions`` is [dims, len(keys)]."""
    columns = positions.to(torch.int64).T.tolist()
    return [(key, tuple(column)) for key, column in zip(keys, columns, strict=True)]


def extend_digests(
    digests: list[bytes], tenant: str, keys: Sequence[int], positions: torch.Tensor, block_size: int
) -> None:
    """Append to ``digests`` (a sequence's, from its first block on) those of the whole blocks of
    ``keys`` (positions [dims, len(keys)]) it does not cover yet."""
    start = len(digests) * block_size
    items = items_of(keys[start:], positions[:, start:])
    parent = digests[-1] if digests else root_digest(tenant)
    for offset in range(0, len(items) - block_size + 1, block_size):
        parent = _digest(parent, items[offset : offset + block_size])
        digests.append(parent)


@dataclass(eq=False, repr=False)
class KVBlock:
    """The KV of one block: ``kv`` [layers, 2 (keys, values), kv heads, len(items), head dim]."""

    digest: bytes
    parent: bytes
    items: tuple[Item, ...]
    kv: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def common(self, items: Sequence[Item]) -> int:
        """How many of its first positions equal ``items``'."""
        n = 0
        for mine, theirs in zip(self.items, items, strict=False):
            if mine != theirs:
                break
            n += 1
        return n


KVSource = Callable[[int, int], torch.Tensor]
"""(start, end) -> the KV of positions start..end, [layers, 2, kv heads, end - start, head dim]."""


class PrefixCache:
    """Blocks of KV keyed by chained digests, bounded by bytes, evicted least recently used.

    ``match`` finds a prompt's longest cached prefix (the caller decides how much of it to use);
    ``insert`` stores a sequence's missing blocks, whole ones and its tail, taking their KV from
    ``source``. A hit hands out the blocks themselves: the caller copies their KV into its own
    cache before the next ``insert``, so no running request ever uses a block's storage in place
    and eviction never disturbs one. A block handed out stays alive until that copy even if
    evicted meanwhile, so the bound can be exceeded by the blocks of one step's hits.

    LRU order keeps a chain's first blocks more recent than its last ones (a touch moves the
    deepest block first, the first block last): eviction takes a prompt's tail before its head,
    rarely leaving children unreachable behind a lost parent (those age out in turn).

    Only the engine thread uses it (no lock). ``max_bytes`` 0 disables it.
    """

    def __init__(self, max_bytes: int, block_size: int) -> None:
        if max_bytes < 0 or block_size < 1:
            raise ValueError(f"{max_bytes=} must be >= 0 and {block_size=} >= 1")
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.bytes = 0
        self.evicted = 0
        self._blocks: OrderedDict[bytes, KVBlock] = OrderedDict()
        self._children: dict[bytes, set[bytes]] = {}

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._blocks

    def match(
        self, tenant: str, digests: Sequence[bytes], keys: Sequence[int], positions: torch.Tensor
    ) -> tuple[list[KVBlock], int]:
        """(blocks, n): the blocks holding the longest cached prefix of the prompt ``keys``
        (positions [dims, len(keys)], whole-block ``digests``) and its length; marked as used."""
        found: list[KVBlock] = []
        for digest in digests:
            block = self._blocks.get(digest)
            if block is None:
                break
            found.append(block)
        start = len(found) * self.block_size
        parent = found[-1].digest if found else root_digest(tenant)
        window = items_of(
            keys[start : start + self.block_size], positions[:, start : start + self.block_size]
        )
        best, length = None, 0
        for child in self._children.get(parent, ()):
            common = self._blocks[child].common(window)
            if common > length:
                best, length = self._blocks[child], common
        if best is not None:
            found.append(best)
        self._touch([block.digest for block in found])
        return found, start + length

    def insert(
        self,
        tenant: str,
        digests: Sequence[bytes],
        keys: Sequence[int],
        positions: torch.Tensor,
        source: KVSource,
    ) -> None:
        """Store the missing blocks of a sequence (``keys``, positions [dims, len(keys)], its
        whole-block ``digests``): whole ones, then its tail unless a cached block covers it;
        their KV is read from ``source`` at once. Stops early if the bound leaves no room
        without evicting this sequence's own blocks."""
        if not self.enabled:
            return
        planned = self._plan(tenant, digests, keys, positions)
        if planned:
            first = planned[0][0]
            kv = source(first, len(keys))
            protected = set(digests) | {block.digest for _, block in planned}
            for offset, block in planned:
                size = len(block.items)
                block.kv = kv[:, :, :, offset - first : offset - first + size].clone()
                if not self._make_room(block.nbytes, protected):
                    break
                self._add(block)
        self._touch([d for d in digests if d in self._blocks])

    def disable(self) -> None:
        """Drop every block and store no more (the model's KV layers are not all alike)."""
        self.max_bytes = 0
        self._blocks.clear()
        self._children.clear()
        self.bytes = 0

    def _plan(
        self, tenant: str, digests: Sequence[bytes], keys: Sequence[int], positions: torch.Tensor
    ) -> list[tuple[int, KVBlock]]:
        """(first position, block without KV) for each block ``insert`` should add."""
        size, empty = self.block_size, torch.empty(0)
        missing = [i for i, digest in enumerate(digests) if digest not in self._blocks]
        first = missing[0] * size if missing else len(digests) * size
        items = items_of(keys[first:], positions[:, first:])
        planned = []
        for i in missing:
            parent = digests[i - 1] if i else root_digest(tenant)
            offset = i * size - first
            planned.append(
                (i * size, KVBlock(digests[i], parent, tuple(items[offset : offset + size]), empty))
            )
        tail = items[len(digests) * size - first :]
        parent = digests[-1] if digests else root_digest(tenant)
        if tail and not any(
            self._blocks[c].common(tail) == len(tail) for c in self._children.get(parent, ())
        ):
            planned.append((len(digests) * size, KVBlock(_digest(parent, tail), parent, tuple(tail), empty)))
        return planned

    def _add(self, block: KVBlock) -> None:
        self._blocks[block.digest] = block
        self._children.setdefault(block.parent, set()).add(block.digest)
        self.bytes += block.nbytes
        for sibling in list(self._children[block.parent]):
            other = self._blocks[sibling]
            if (
                sibling != block.digest
                and len(other.items) < len(block.items)
                and block.common(other.items) == len(other.items)
            ):
                self._remove(sibling)  # a shorter tail this block now covers

    def _remove(self, digest: bytes) -> None:
        block = self._blocks.pop(digest)
        self.bytes -= block.nbytes
        siblings = self._children[block.parent]
        siblings.discard(digest)
        if not siblings:
            del self._children[block.parent]

    def _touch(self, digests: list[bytes]) -> None:
        for digest in reversed(digests):
            self._blocks.move_to_end(digest)

    def _make_room(self, needed: int, protected: set[bytes]) -> bool:
        """Evict least recently used blocks outside ``protected`` until ``needed`` bytes fit."""
        if needed > self.max_bytes:
            return False
        while self.bytes + needed > self.max_bytes:
            victim = next((d for d in self._blocks if d not in protected), None)
            if victim is None:
                return False
            self._remove(victim)
            self.evicted += 1
        return True
