"""Plugs the paged KV cache into stock Hugging Face models through transformers' attention registry.

The Llama-family attention modules (Llama, Mistral, Qwen2, Qwen3, ...) compute q, k, v and
RoPE themselves, then call the registered attention function with `module.layer_idx` and every
extra keyword argument given to `model(...)`. Ours stores the step's keys and values in that
layer's cache blocks and attends over each sequence's blocks, so the model classes run unchanged.
An implementation name that has no mask function registered gets no mask from transformers.

Under `torch.compile` (see `compilation.py`) the cache write and the attention are torch custom
ops, `llmserve::write_kv` and `llmserve::paged_attention`: dynamo sees each as one opaque call with
a known output shape, never traces into the Triton launch code or the torch path's host syncs
(`.tolist()`), and compiles the rest of the layer (norms, RoPE, MLP) around them without a graph
break. Defining the ops at import fills torch's op registry, not state of ours; importing this
module again (a reload) replaces them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface

from llmserve.engine import attention as torch_attention
from llmserve.engine.kv_cache import KVCache

ATTN_IMPLEMENTATION = "llmserve_paged"
META_KWARG = "llmserve_attention"


@dataclass
class AttentionMetadata:
    """Where this step's tokens go in the cache and which positions each sequence attends to."""

    kv_cache: KVCache
    slot_mapping: torch.Tensor  # [T] int64, cache slot of each new token (-1 = padding)
    cu_seqlens_q: torch.Tensor  # [B+1] int32, query offsets per sequence
    context_lens: torch.Tensor  # [B] int32, cached + new tokens per sequence
    block_tables: torch.Tensor  # [B, max_blocks] int32
    max_seqlen_q: int
    use_triton: bool = False
    _copies: dict[torch.device, AttentionMetadata] = field(default_factory=dict, repr=False, compare=False)

    def on(self, device: torch.device) -> AttentionMetadata:
        """This metadata with its index tensors on `device` (a model split across GPUs); copied once per step."""
        if self.slot_mapping.device == device:
            return self
        copy = self._copies.get(device)
        if copy is None:
            copy = AttentionMetadata(
                self.kv_cache, self.slot_mapping.to(device), self.cu_seqlens_q.to(device),
                self.context_lens.to(device), self.block_tables.to(device), self.max_seqlen_q, self.use_triton,
            )
            self._copies[device] = copy
        return copy


def _write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, Hkv, D]: keys then values, written in place
    slot_mapping: torch.Tensor,  # [T] int64; < 0 means "don't store"
    use_triton: bool,
) -> None:
    """Store this step's keys and values at their slots, with the Triton or the torch kernel.

    Keys and values come as one tensor: given k_cache and v_cache as two mutated arguments sharing
    one storage, inductor (torch 2.13) wrote only one in place and cloned the other, a whole cache
    layer, copying it back after every call.
    """
    _backend(use_triton).write_kv(key, value, kv_cache[0], kv_cache[1], slot_mapping)


def _paged_attention(
    query: torch.Tensor,  # [T, H, D]
    kv_cache: torch.Tensor,  # [2, num_blocks, block_size, Hkv, D]
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32
    context_lens: torch.Tensor,  # [B] int32
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    scale: float,
    max_seqlen_q: int,
    use_triton: bool,
) -> torch.Tensor:  # [T, H, D], a new tensor with query's strides
    """Causal attention over the paged cache, with the Triton or the torch kernel."""
    return _backend(use_triton).paged_attention(  # type: ignore[no-any-return]
        query, kv_cache[0], kv_cache[1], cu_seqlens_q, context_lens, block_tables, scale, max_seqlen_q
    )


write_kv = torch.library.custom_op("llmserve::write_kv", _write_kv, mutates_args=("kv_cache",))
paged_attention = torch.library.custom_op("llmserve::paged_attention", _paged_attention, mutates_args=())


@write_kv.register_fake
def _write_kv_fake(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                   use_triton: bool) -> None:
    return None


@paged_attention.register_fake
def _paged_attention_fake(query: torch.Tensor, kv_cache: torch.Tensor, cu_seqlens_q: torch.Tensor,
                          context_lens: torch.Tensor, block_tables: torch.Tensor, scale: float,
                          max_seqlen_q: int, use_triton: bool) -> torch.Tensor:
    # Both kernels allocate their output with *_like(query), which keeps query's strides.
    return torch.empty_like(query)


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention function with the signature transformers' AttentionInterface expects.

    query: [1, H, T, D], key/value: [1, Hkv, T, D] (after RoPE). Returns ([1, T, H, D], None).
    Under torch.compile it calls the custom ops; eagerly it calls their bodies directly, which
    skips the dispatcher's ~20 us per op call and runs exactly the same kernels.
    """
    meta: AttentionMetadata = kwargs[META_KWARG]
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    layer_idx: int = module.layer_idx  # type: ignore[assignment]  # set by every Llama-family attention
    kv_cache = meta.kv_cache.layer_kv(layer_idx)
    meta = meta.on(kv_cache.device)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    is_compiling = torch.compiler.is_compiling()
    store = write_kv if is_compiling else _write_kv
    attend = paged_attention if is_compiling else _paged_attention
    store(k, v, kv_cache, meta.slot_mapping, meta.use_triton)
    out = attend(
        q, kv_cache, meta.cu_seqlens_q, meta.context_lens, meta.block_tables, scale, meta.max_seqlen_q,
        meta.use_triton,
    )
    return out.unsqueeze(0), None


def _backend(use_triton: bool) -> Any:
    """The Triton kernels (imported on first use: CUDA machines only) or the torch path."""
    if not use_triton:
        return torch_attention
    from llmserve.engine import triton_attention

    return triton_attention


def install(model: torch.nn.Module) -> None:
    """Register our attention function and switch the model to it."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)  # type: ignore[operator]
