"""Plugs the paged KV cache into stock Hugging Face models through transformers' attention registry.

The Llama-family attention modules (Llama, Mistral, Qwen2, Qwen3, ...) compute q, k, v and
RoPE themselves, then call the registered attention function with `module.layer_idx` and every
extra keyword argument given to `model(...)`. Ours stores the step's keys and values in that
layer's cache blocks and attends over each sequence's blocks, so the model classes run unchanged.
An implementation name that has no mask function registered gets no mask from transformers.
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
    """
    meta: AttentionMetadata = kwargs[META_KWARG]
    q = query[0].transpose(0, 1)  # [T, H, D]
    k = key[0].transpose(0, 1)
    v = value[0].transpose(0, 1)
    layer_idx: int = module.layer_idx  # type: ignore[assignment]  # set by every Llama-family attention
    k_cache, v_cache = meta.kv_cache.layer(layer_idx)
    meta = meta.on(k_cache.device)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    backend = _triton_backend() if meta.use_triton else torch_attention
    backend.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
    out = backend.paged_attention(
        q, k_cache, v_cache, meta.cu_seqlens_q, meta.context_lens, meta.block_tables, scale, meta.max_seqlen_q
    )
    return out.unsqueeze(0), None


def _triton_backend() -> Any:
    from llmserve.engine import triton_attention

    return triton_attention


def install(model: torch.nn.Module) -> None:
    """Register our attention function and switch the model to it."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)  # type: ignore[operator]
