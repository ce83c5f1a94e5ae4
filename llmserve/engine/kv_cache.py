"""The KV-cache block pool: fixed-size blocks, per-sequence block tables and prefix caching.

The pool hands out block ids; the tensors holding the keys and values live in `KVCache`.
A full block whose keys and values have been computed is registered under a hash chained
from the previous block's hash and its own tokens, so a later sequence with the same prefix
(a system prompt, earlier turns of a chat) reuses it. Freed blocks stay in an LRU list with
their hash and are only recycled when no free unhashed block is left.
"""

from __future__ import annotations

import collections.abc
from collections import OrderedDict
from dataclasses import dataclass

import torch

from llmserve.engine.request import Sequence


@dataclass(frozen=True)
class KVCacheSpec:
    """Shape of the cache of one model."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    num_blocks: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize

    @property
    def num_tokens(self) -> int:
        return self.num_blocks * self.block_size


class KVCache:
    """The key and value tensors of every layer: `[num_blocks, block_size, num_kv_heads, head_dim]` each.

    `device` is one device, or one per layer for a model split across devices (an accelerate
    device map): each layer's cache lives where that layer runs. On one device a single
    `storage` tensor holds every layer; split, each layer gets its own tensor and `storage` is None.
    Either way a layer's keys and values are the two halves of one `[2, ...]` view (`layer_kv`), so
    the cache write can name a single tensor it mutates (see `hf_attention.write_kv`).
    """

    def __init__(self, spec: KVCacheSpec, device: torch.device | collections.abc.Sequence[torch.device]) -> None:
        self.spec = spec
        devices = [device] * spec.num_layers if isinstance(device, torch.device) else list(device)
        if len(devices) != spec.num_layers:
            raise ValueError(f"{len(devices)} layer devices for {spec.num_layers} layers")
        self.devices = devices
        shape = (spec.num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        self.storage: torch.Tensor | None = None
        if len(set(devices)) == 1:
            self.storage = torch.zeros((2, spec.num_layers, *shape), dtype=spec.dtype, device=devices[0])
            self._kv_layers = [self.storage[:, i] for i in range(spec.num_layers)]
        else:
            self._kv_layers = [torch.zeros((2, *shape), dtype=spec.dtype, device=d) for d in devices]
        self._layers = [(kv[0], kv[1]) for kv in self._kv_layers]

    def layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_cache, v_cache) of one layer, on the device that runs it."""
        return self._layers[layer_idx]

    def layer_kv(self, layer_idx: int) -> torch.Tensor:  # [2, num_blocks, block_size, Hkv, D]
        """One layer's keys (`[0]`) and values (`[1]`) as one view, on the device that runs it."""
        return self._kv_layers[layer_idx]


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
        return True

    def ensure_capacity(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the sequence's block table to hold `num_tokens`; False if the pool is exhausted."""
        missing = self.blocks_needed(num_tokens) - len(seq.block_table)
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
