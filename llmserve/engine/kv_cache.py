"""The KV-cache block pool: fixed-size blocks, per-sequence block tables and prefix caching.

The pool hands out block ids; the tensors holding the keys and values live in `KVCache`.
A full block whose keys and values have been computed is registered under a hash chained
from the previous block's hash and its own tokens, so a later sequence with the same prefix
(a system prompt, earlier turns of a chat) reuses it. Freed blocks stay in an LRU list with
their hash and are only recycled when no free unhashed block is left.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import torch

from llmserve.engine.request import Sequence


@dataclass(frozen=True)
class LayerKVSpec:
    """What one attention layer stores per token: its KV heads, key and value head dims (they differ
    for multi-head latent attention's expanded k/v), and its sliding window (0 = none)."""

    num_kv_heads: int
    head_dim: int
    head_dim_v: int
    sliding_window: int = 0

    @property
    def elements_per_token(self) -> int:
        return self.num_kv_heads * (self.head_dim + self.head_dim_v)


@dataclass(frozen=True)
class KVCacheSpec:
    """Shape of the cache of one model.

    `layers` gives each layer's own shape; left empty, every layer stores `num_kv_heads` x `head_dim`
    for keys and values alike. Built from per-layer shapes (`from_layers`), `num_kv_heads` and
    `head_dim` are the largest of any layer.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    num_blocks: int
    dtype: torch.dtype
    layers: tuple[LayerKVSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.layers and len(self.layers) != self.num_layers:
            raise ValueError(f"{len(self.layers)} layer shapes for {self.num_layers} layers")

    @classmethod
    def from_layers(cls, layers: collections.abc.Sequence[LayerKVSpec], block_size: int, num_blocks: int,
                    dtype: torch.dtype) -> KVCacheSpec:
        """A spec from each layer's shape."""
        return cls(len(layers), max(s.num_kv_heads for s in layers), max(s.head_dim for s in layers), block_size,
                   num_blocks, dtype, tuple(layers))

    def with_num_blocks(self, num_blocks: int) -> KVCacheSpec:
        """The same layers with another block count."""
        return dataclasses.replace(self, num_blocks=num_blocks)

    def layer_spec(self, layer_idx: int) -> LayerKVSpec:
        if self.layers:
            return self.layers[layer_idx]
        return LayerKVSpec(self.num_kv_heads, self.head_dim, self.head_dim)

    @property
    def is_uniform(self) -> bool:
        """Every layer stores keys and values of one shape (one `[2, layers, ...]` tensor can hold them)."""
        first = self.layer_spec(0)
        return first.head_dim == first.head_dim_v and all(
            (s.num_kv_heads, s.head_dim, s.head_dim_v) == (first.num_kv_heads, first.head_dim, first.head_dim_v)
            for s in (self.layer_spec(i) for i in range(self.num_layers)))

    @property
    def bytes_per_token(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return sum(self.layer_spec(i).elements_per_token for i in range(self.num_layers)) * itemsize

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size


class KVCache:
    """The key and value tensors of every layer: `[num_blocks, block_size, num_kv_heads, head_dim]` each,
    shaped per layer by `spec.layer_spec(i)`.

    `device` is one device, or one per layer for a model split across devices (an accelerate
    device map): each layer's cache lives where that layer runs. On one device with every layer
    alike, a single `storage` tensor holds every layer; otherwise each layer gets its own tensor
    and `storage` is None. A layer's keys and values are always parts of one tensor (`layer_kv`), so
    the cache write can name a single tensor it mutates (see `hf_attention.write_kv`): the two halves
    of a `[2, ...]` view, or, where key and value head dims differ, the two ends of the last
    dimension of a `[num_blocks, block_size, num_kv_heads, head_dim + head_dim_v]` tensor.
    """

    def __init__(self, spec: KVCacheSpec, device: torch.device | collections.abc.Sequence[torch.device]) -> None:
        self.spec = spec
        devices = [device] * spec.num_layers if isinstance(device, torch.device) else list(device)
        if len(devices) != spec.num_layers:
            raise ValueError(f"{len(devices)} layer devices for {spec.num_layers} layers")
        self.devices = devices
        self.storage: torch.Tensor | None = None
        if len(set(devices)) == 1 and spec.is_uniform:
            first = spec.layer_spec(0)
            shape = (spec.num_blocks, spec.block_size, first.num_kv_heads, first.head_dim)
            self.storage = torch.zeros((2, spec.num_layers, *shape), dtype=spec.dtype, device=devices[0])
            self._kv_layers = [self.storage[:, i] for i in range(spec.num_layers)]
        else:
            self._kv_layers = [_layer_tensor(spec, i, d) for i, d in enumerate(devices)]
        self._layers = [split_kv(kv, spec.layer_spec(i).head_dim) for i, kv in enumerate(self._kv_layers)]

    def layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_cache, v_cache) of one layer, on the device that runs it."""
        return self._layers[layer_idx]

    def layer_kv(self, layer_idx: int) -> torch.Tensor:  # [2, num_blocks, block_size, Hkv, D] or [..., Dk + Dv]
        """One layer's keys and values as one tensor, on the device that runs it (see `split_kv`)."""
        return self._kv_layers[layer_idx]


def _layer_tensor(spec: KVCacheSpec, layer_idx: int, device: torch.device) -> torch.Tensor:
    """A zeroed cache tensor of one layer in the layout `split_kv` reads."""
    layer = spec.layer_spec(layer_idx)
    slots = (spec.num_blocks, spec.block_size, layer.num_kv_heads)
    if layer.head_dim == layer.head_dim_v:
        return torch.zeros((2, *slots, layer.head_dim), dtype=spec.dtype, device=device)
    return torch.zeros((*slots, layer.head_dim + layer.head_dim_v), dtype=spec.dtype, device=device)


def split_kv(kv_cache: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k_cache [num_blocks, block_size, Hkv, Dk], v_cache [..., Dv]) views of one layer's tensor:
    its two halves when 5-D (`[2, ...]`), else the first `head_dim` features and the rest."""
    if kv_cache.dim() == 5:
        return kv_cache[0], kv_cache[1]
    return kv_cache[..., :head_dim], kv_cache[..., head_dim:]


class BlockPool:
    """Allocates cache blocks to sequences, with reference counts and prefix caching."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._hashes: list[int | None] = [None] * num_blocks
        self._tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        # Blocks nobody uses, least recently freed first; hashed ones may still be reused.
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.num_prefix_hits = 0  # tokens served from the prefix cache, for metrics
        self.num_prefix_queries = 0  # tokens looked up in the prefix cache, for metrics

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Share of blocks referenced by live sequences."""
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, seq: Sequence) -> bool:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks.

        Sets `seq.block_table`, `seq.num_computed_tokens` and `seq.num_cached_tokens`.
        Returns False (and changes nothing) when the pool has too few free blocks.
        """
        tokens = seq.all_ids
        # Prompt logprobs need the logits of every prompt position, so nothing may be skipped.
        cached = self._match_prefix(tokens) if seq.params.prompt_logprobs is None else []
        num_new = self.blocks_needed(len(tokens)) - len(cached)
        num_revived = sum(1 for b in cached if self._ref_counts[b] == 0)
        if num_new > len(self._free) - num_revived:
            return False
        for block in cached:
            if self._ref_counts[block] == 0:
                del self._free[block]
            self._ref_counts[block] += 1
        seq.block_table = cached + [self._take_free() for _ in range(num_new)]
        seq.num_computed_tokens = seq.num_cached_tokens = len(cached) * self.block_size
        seq.num_hashed_blocks = len(cached)
        self.num_prefix_hits += seq.num_cached_tokens
        if self.enable_prefix_caching and seq.params.prompt_logprobs is None:
            self.num_prefix_queries += len(tokens)
        return True

    def ensure_capacity(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the sequence's block table to hold `num_tokens`; False if the pool is exhausted."""
        missing = self.blocks_needed(num_tokens) - len(seq.block_table)
        if missing <= 0:  # the common decode step: room in the last block (runs per sequence per step)
            return True
        if missing > len(self._free):
            return False
        seq.block_table.extend(self._take_free() for _ in range(missing))
        return True

    def free(self, seq: Sequence) -> None:
        """Release the sequence's blocks; hashed ones stay reusable until recycled."""
        for block in reversed(seq.block_table):
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free[block] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_hashed_blocks = 0

    def register_computed(self, seq: Sequence) -> None:
        """Hash the sequence's full blocks whose keys and values are now in the cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        # Only blocks filled since the last call: this runs for every sequence on every step. A
        # token computed ahead of the host knowing its id (a pending token) waits for the next call.
        for i in range(seq.num_hashed_blocks, min(seq.num_computed_tokens, seq.num_tokens) // bs):
            seq.num_hashed_blocks = i + 1
            block = seq.block_table[i]
            if self._hashes[block] is not None:
                continue
            parent = self._hashes[seq.block_table[i - 1]] if i else None
            tokens = tuple(seq.token_at(p) for p in range(i * bs, (i + 1) * bs))
            digest = hash((parent, tokens))
            self._hashes[block] = digest
            self._tokens[block] = tokens
            self._by_hash.setdefault(digest, block)

    def _match_prefix(self, tokens: list[int]) -> list[int]:
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        # At least one token must be computed so the step has logits to sample from.
        num_full = (len(tokens) - 1) // bs
        matched: list[int] = []
        parent: int | None = None
        for i in range(num_full):
            chunk = tuple(tokens[i * bs:(i + 1) * bs])
            digest = hash((parent, chunk))
            block = self._by_hash.get(digest)
            if block is None or self._tokens[block] != chunk:
                break
            matched.append(block)
            parent = digest
        return matched

    def _take_free(self) -> int:
        block, _ = self._free.popitem(last=False)
        digest = self._hashes[block]
        if digest is not None:
            if self._by_hash.get(digest) == block:
                del self._by_hash[digest]
            self._hashes[block] = None
            self._tokens[block] = None
        self._ref_counts[block] = 1
        return block
