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
from llmserve.engine.kv_cache import KVCache, split_kv

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
    # The torch path's decode-only steps: every sequence's cache slots and key mask, built once per
    # step instead of in every layer (see attention.decode_gather); None otherwise.
    decode_slots: torch.Tensor | None = None  # [B, L] int64
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, L] bool
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
                _to(self.decode_slots, device), _to(self.decode_mask, device),
            )
            self._copies[device] = copy
        return copy


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def _write_kv(
    key: torch.Tensor,  # [T, Hkv, Dk]
    value: torch.Tensor,  # [T, Hkv, Dv]
    kv_cache: torch.Tensor,  # one layer's keys and values (see kv_cache.split_kv), written in place
    slot_mapping: torch.Tensor,  # [T] int64; < 0 means "don't store"
    use_triton: bool,
) -> None:
    """Store this step's keys and values at their slots, with the Triton or the torch kernel.

    Keys and values come as one tensor: given k_cache and v_cache as two mutated arguments sharing
    one storage, inductor (torch 2.13) wrote only one in place and cloned the other, a whole cache
    layer, copying it back after every call.
    """
    k_cache, v_cache = split_kv(kv_cache, key.shape[-1])
    _backend(use_triton).write_kv(key, value, k_cache, v_cache, slot_mapping)


def _paged_attention(
    query: torch.Tensor,  # [T, H, Dk]
    kv_cache: torch.Tensor,  # one layer's keys and values (see kv_cache.split_kv)
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32
    context_lens: torch.Tensor,  # [B] int32
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    scale: float,
    max_seqlen_q: int,
    use_triton: bool,
    sliding_window: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,  # [H]
    alibi_slopes: torch.Tensor | None = None,  # [H]
    decode_slots: torch.Tensor | None = None,  # [B, L] int64, the torch path's decode-only steps
    decode_mask: torch.Tensor | None = None,  # [B, 1, 1, L] bool
) -> torch.Tensor:  # [T, H, Dv], a new tensor (see attention.output_like)
    """Causal attention over the paged cache, with the Triton or the torch kernel, and the layer's
    own window, soft-cap, sinks and ALiBi slopes (defaults: off)."""
    k_cache, v_cache = split_kv(kv_cache, query.shape[-1])
    if use_triton:
        return _backend(True).paged_attention(  # type: ignore[no-any-return]
            query, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, scale, max_seqlen_q,
            sliding_window, softcap, sinks, alibi_slopes,
        )  # fmt: skip
    return torch_attention.paged_attention(
        query, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, scale, max_seqlen_q,
        sliding_window, softcap, sinks, alibi_slopes, decode_slots, decode_mask,
    )  # fmt: skip


write_kv = torch.library.custom_op("llmserve::write_kv", _write_kv, mutates_args=("kv_cache",))
paged_attention = torch.library.custom_op("llmserve::paged_attention", _paged_attention, mutates_args=())


@write_kv.register_fake
def _write_kv_fake(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                   use_triton: bool) -> None:
    return None


@paged_attention.register_fake
def _paged_attention_fake(query: torch.Tensor, kv_cache: torch.Tensor, cu_seqlens_q: torch.Tensor,
                          context_lens: torch.Tensor, block_tables: torch.Tensor, scale: float,
                          max_seqlen_q: int, use_triton: bool, sliding_window: int = 0, softcap: float = 0.0,
                          sinks: torch.Tensor | None = None,
                          alibi_slopes: torch.Tensor | None = None, decode_slots: torch.Tensor | None = None,
                          decode_mask: torch.Tensor | None = None) -> torch.Tensor:
    # Both kernels allocate their output with output_like: query's strides when Dv == Dk.
    return torch_attention.output_like(query, split_kv(kv_cache, query.shape[-1])[1].shape[-1])


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention function with the signature transformers' AttentionInterface expects.

    query: [1, H, T, Dk], key: [1, Hkv, T, Dk], value: [1, Hkv, T, Dv] (after RoPE). Returns
    ([1, T, H, Dv], None). The layer's own `sliding_window` (a query sees its last W positions),
    `softcap` (Gemma 2), `s_aux` (gpt-oss's learned sinks, [H]) and `alibi_slopes` ([H]; no stock
    class passes them today) go to the kernels; `attention_contract.inspect_attention` refuses at
    load any model that passes something else that matters. Under torch.compile it calls the custom
    ops; eagerly it calls their bodies directly, which skips the dispatcher's ~20 us per op call
    and runs exactly the same kernels.
    """
    meta: AttentionMetadata = kwargs[META_KWARG]
    q = query[0].transpose(0, 1)  # [T, H, Dk]
    k = key[0].transpose(0, 1)  # [T, Hkv, Dk]
    v = value[0].transpose(0, 1)  # [T, Hkv, Dv]
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
        meta.use_triton, sliding_window or 0, float(softcap or 0.0), s_aux, alibi_slopes,
        meta.decode_slots, meta.decode_mask,
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
