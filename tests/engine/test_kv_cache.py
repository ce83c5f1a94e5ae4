"""Block pool: allocation, growth, freeing, and prefix caching with exact block reuse; per-layer cache shapes."""

from __future__ import annotations

import torch

from llmserve.engine.kv_cache import BlockPool, KVCache, KVCacheSpec, LayerKVSpec, split_kv
from llmserve.engine.request import SamplingParams, Sequence


def _seq(seq_id: int, tokens: list[int]) -> Sequence:
    return Sequence(seq_id, tokens, SamplingParams())


def test_allocate_gives_blocks_for_every_token() -> None:
    pool = BlockPool(num_blocks=8, block_size=4)
    seq = _seq(0, list(range(10)))
    assert pool.allocate(seq)
    assert len(seq.block_table) == 3
    assert pool.num_free_blocks == 5
    assert seq.num_computed_tokens == 0


def test_allocate_fails_without_changing_anything() -> None:
    pool = BlockPool(num_blocks=2, block_size=4)
    seq = _seq(0, list(range(9)))
    assert not pool.allocate(seq)
    assert seq.block_table == [] and pool.num_free_blocks == 2


def test_ensure_capacity_grows_one_block_at_a_time() -> None:
    pool = BlockPool(num_blocks=4, block_size=4)
    seq = _seq(0, list(range(4)))
    assert pool.allocate(seq)
    assert pool.ensure_capacity(seq, 4) and len(seq.block_table) == 1
    assert pool.ensure_capacity(seq, 5) and len(seq.block_table) == 2
    assert not pool.ensure_capacity(seq, 17)


def test_free_returns_blocks() -> None:
    pool = BlockPool(num_blocks=4, block_size=4)
    seq = _seq(0, list(range(8)))
    pool.allocate(seq)
    pool.free(seq)
    assert pool.num_free_blocks == 4 and seq.block_table == []


def test_prefix_blocks_are_shared_after_computation() -> None:
    pool = BlockPool(num_blocks=16, block_size=4)
    first = _seq(0, list(range(10)))
    pool.allocate(first)
    first.num_computed_tokens = 10
    pool.register_computed(first)
    second = _seq(1, list(range(8)) + [99, 98, 97])
    assert pool.allocate(second)
    assert second.block_table[:2] == first.block_table[:2]
    assert second.block_table[2] != first.block_table[2]
    assert second.num_computed_tokens == second.num_cached_tokens == 8


def test_prefix_cache_survives_free_until_recycled() -> None:
    pool = BlockPool(num_blocks=4, block_size=4)
    first = _seq(0, list(range(9)))
    pool.allocate(first)
    first.num_computed_tokens = 9
    pool.register_computed(first)
    cached = first.block_table[:2]
    pool.free(first)
    again = _seq(1, list(range(9)))
    assert pool.allocate(again)
    assert again.block_table[:2] == cached and again.num_cached_tokens == 8


def test_fully_cached_prompt_still_computes_its_last_token() -> None:
    pool = BlockPool(num_blocks=8, block_size=4)
    first = _seq(0, list(range(8)))
    pool.allocate(first)
    first.num_computed_tokens = 8
    pool.register_computed(first)
    second = _seq(1, list(range(8)))
    pool.allocate(second)
    assert second.num_cached_tokens == 4  # the last block is recomputed to get logits
    assert second.num_uncomputed_tokens == 4


def test_different_prefix_is_not_reused() -> None:
    pool = BlockPool(num_blocks=8, block_size=4)
    first = _seq(0, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    pool.allocate(first)
    first.num_computed_tokens = 9
    pool.register_computed(first)
    second = _seq(1, [0, 2, 3, 4, 5, 6, 7, 8, 9])
    pool.allocate(second)
    assert second.num_cached_tokens == 0


def test_prefix_caching_can_be_disabled() -> None:
    pool = BlockPool(num_blocks=8, block_size=4, enable_prefix_caching=False)
    first = _seq(0, list(range(9)))
    pool.allocate(first)
    first.num_computed_tokens = 9
    pool.register_computed(first)
    second = _seq(1, list(range(9)))
    pool.allocate(second)
    assert second.num_cached_tokens == 0


def test_per_layer_shapes_get_tensors_of_their_own() -> None:
    """Layers of different KV heads and an MLA-shaped layer (key and value head dims differ): each
    layer's keys and values are views of one tensor, sized as the layer stores them."""
    layers = [LayerKVSpec(2, 8, 8, sliding_window=16), LayerKVSpec(4, 8, 8), LayerKVSpec(4, 24, 12)]
    spec = KVCacheSpec.from_layers(layers, block_size=4, num_blocks=5, dtype=torch.float32)
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.is_uniform) == (3, 4, 24, False)
    assert spec.bytes_per_token == 4 * (2 * 16 + 4 * 16 + 4 * 36)
    cache = KVCache(spec, torch.device("cpu"))
    assert cache.storage is None
    for index, layer in enumerate(layers):
        k, v = cache.layer(index)
        assert k.shape == (5, 4, layer.num_kv_heads, layer.head_dim)
        assert v.shape == (5, 4, layer.num_kv_heads, layer.head_dim_v)
        k.fill_(1.0)
        v.fill_(2.0)
        kv = cache.layer_kv(index)
        assert kv.sum() == k.numel() + 2 * v.numel()  # both live in the one tensor the cache write mutates
        assert all(torch.equal(a, b) for a, b in zip(split_kv(kv, layer.head_dim), (k, v), strict=True))
    uniform = KVCacheSpec(2, 2, 8, 4, 5, torch.float32)
    assert uniform.is_uniform and KVCache(uniform, torch.device("cpu")).storage is not None
    assert uniform.bytes_per_token == KVCacheSpec.from_layers([LayerKVSpec(2, 8, 8)] * 2, 4, 5,
                                                              torch.float32).bytes_per_token
