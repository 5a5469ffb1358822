"""The prefix cache as pure logic: chained block digests, longest-prefix match (whole blocks,
then into a diverging block or a stored tail), LRU by bytes, and where a hit may end (never
inside an image or an attention block)."""

from __future__ import annotations

import torch

from llm_service.engine.prefill import reusable_length
from llm_service.engine.prefix_cache import PrefixCache, extend_digests
from tandem.testing.engine import ScriptedModel, text_request

BLOCK = 4
ONE = 2 * 2 * BLOCK * 4  # bytes of a whole block: 2 layers x (keys, values) x BLOCK float32 positions


def _positions(n: int, dims: int = 1, shift: int = 0) -> torch.Tensor:
    return (torch.arange(n) + shift).expand(dims, -1)


def _digests(keys: list[int], tenant: str = "", positions: torch.Tensor | None = None) -> list[bytes]:
    out: list[bytes] = []
    extend_digests(out, tenant, keys, _positions(len(keys)) if positions is None else positions, BLOCK)
    return out


def _read(start: int, end: int) -> torch.Tensor:
    """KV whose position p holds p (keys) and -p (values): [2 layers, 2, 1 head, n, 1]."""
    values = torch.arange(start, end, dtype=torch.float32)
    return torch.stack([values, -values])[None, :, None, :, None].expand(2, -1, -1, -1, -1).contiguous()


def _insert(cache: PrefixCache, keys: list[int], tenant: str = "") -> None:
    cache.insert(tenant, _digests(keys, tenant), keys, _positions(len(keys)), _read)


def _match(cache: PrefixCache, keys: list[int], tenant: str = "") -> int:
    return cache.match(tenant, _digests(keys, tenant), keys, _positions(len(keys)))[1]


def test_digests_chain_whole_blocks_and_cover_keys_positions_and_tenant() -> None:
    keys = list(range(10, 20))  # two whole blocks and a partial one (no digest)
    digests = _digests(keys)
    assert len(digests) == 2 and digests == _digests(keys)
    assert _digests([99, *keys[1:]])[1] != digests[1]  # an earlier block changes every later one
    assert _digests(keys, tenant="alice")[0] != digests[0]  # no tenant shares another's blocks
    assert _digests(keys, positions=_positions(10, shift=1))[0] != digests[0]  # other positions
    assert _digests(keys, positions=_positions(10, dims=3))[0] != digests[0]
    grown = list(digests[:1])
    extend_digests(grown, "", keys, _positions(10), BLOCK)  # extending computes only the rest
    assert grown == digests


def test_match_finds_the_longest_cached_prefix_to_the_position() -> None:
    cache = PrefixCache(max_bytes=100 * ONE, block_size=BLOCK)
    _insert(cache, list(range(10)))  # two whole blocks and a tail of 2
    assert len(cache) == 3 and cache.bytes == 2 * ONE + ONE // 2
    blocks, n = cache.match("", _digests(list(range(12))), list(range(12)), _positions(12))
    assert n == 10 and [len(b.items) for b in blocks] == [4, 4, 2]
    assert blocks[1].kv[0, 0, 0, :, 0].tolist() == [4, 5, 6, 7]
    assert _match(cache, [0, 1, 2, 3, 4, 5, 50, 51, 52]) == 6  # into the second block
    assert _match(cache, [1, 2, 3]) == 0
    assert _match(cache, list(range(10)), tenant="bob") == 0


def test_insert_skips_what_is_cached_and_a_longer_block_replaces_a_tail() -> None:
    cache = PrefixCache(max_bytes=100 * ONE, block_size=BLOCK)
    reads: list[tuple[int, int]] = []

    def read(start: int, end: int) -> torch.Tensor:
        reads.append((start, end))
        return _read(start, end)

    keys = list(range(6))
    cache.insert("", _digests(keys), keys, _positions(6), read)
    cache.insert("", _digests(keys), keys, _positions(6), read)  # all cached: nothing read
    cache.insert("", _digests(keys[:5]), keys[:5], _positions(5), read)  # its tail is covered
    assert reads == [(0, 6)] and len(cache) == 2
    longer = list(range(8))
    cache.insert("", _digests(longer), longer, _positions(8), read)
    assert reads[-1] == (4, 8) and len(cache) == 2  # the tail [4, 5] went: block [4..8) covers it
    assert cache.bytes == 2 * ONE


def test_bytes_bound_evicts_least_recently_used_tails_first() -> None:
    cache = PrefixCache(max_bytes=4 * ONE, block_size=BLOCK)
    a, b = list(range(8)), list(range(50, 58))
    _insert(cache, a)
    _insert(cache, b)
    _match(cache, a)  # a is the most recent now
    _insert(cache, list(range(80, 84)))
    assert cache.bytes <= 4 * ONE and cache.evicted == 1
    assert _match(cache, a) == 8 and _match(cache, b) == 4  # b's last block went, not its first


def test_a_sequence_never_evicts_itself_and_oversized_blocks_are_not_kept() -> None:
    cache = PrefixCache(max_bytes=2 * ONE, block_size=BLOCK)
    _insert(cache, list(range(16)))
    assert _match(cache, list(range(16))) == 8  # its head kept, the rest not stored
    tiny = PrefixCache(max_bytes=ONE - 1, block_size=BLOCK)
    _insert(tiny, list(range(16)))
    assert len(tiny) == 0 and tiny.bytes == 0
    off = PrefixCache(max_bytes=0, block_size=BLOCK)
    _insert(off, list(range(16)))
    assert not off.enabled and len(off) == 0


def test_a_hit_never_ends_inside_an_image_or_an_attention_block() -> None:
    model = ScriptedModel([], start=0, vocab_size=10)
    keys = [5, 6, 7, -1, -2, -3, -4, 8, 9, -5, -6, 10]
    request = text_request(model, [abs(k) for k in keys], keys=keys)
    assert reusable_length(request, 5) == 3  # inside the first image: back to its start
    assert reusable_length(request, 7) == 7  # right after it: text follows
    assert reusable_length(request, 3) == 3 and reusable_length(request, 10) == 9
    assert reusable_length(request, 0) == 0
    request.attention_blocks = ((1, 8),)  # a block around the image and its neighbours
    assert reusable_length(request, 5) == 1 and reusable_length(request, 7) == 1
    assert reusable_length(request, 8) == 8
    request.prompt_keys = [-1, -2, -3, 4]
    request.attention_blocks = ()
    assert reusable_length(request, 2) == 0  # an image at the very start
