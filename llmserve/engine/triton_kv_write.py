"""Triton store of a step's keys and values into the paged KV cache: the CUDA fast path of
:func:`llmserve.engine.attention.write_kv`, graph-safe (negative slots are skipped in-kernel, no host sync).

Also the two launch helpers the Triton attention wrappers share (:func:`dim_pad`, :func:`unit_last_stride`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# The kernel's signature and launch keep their arguments grouped by role, so ruff format is off around them.
# fmt: off


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_kcs, stride_kch, stride_vcs, stride_vch,
    NUM_KV_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    HEAD_DIM_V: tl.constexpr, HEAD_DIM_V_PAD: tl.constexpr,
):
    """Grid: (tokens,). Copies one token's keys and values to its slot; negative slots are skipped."""
    tok = tl.program_id(0)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    h = tl.arange(0, HEADS_PAD)[:, None]
    d = tl.arange(0, HEAD_DIM_PAD)[None, :]
    mask = (h < NUM_KV_HEADS) & (d < HEAD_DIM)
    k = tl.load(key_ptr + tok * stride_kt + h * stride_kh + d, mask=mask)
    tl.store(k_cache_ptr + slot * stride_kcs + h * stride_kch + d, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    dv = tl.arange(0, HEAD_DIM_V_PAD)[None, :]
    mask_v = (h < NUM_KV_HEADS) & (dv < HEAD_DIM_V)
    v = tl.load(value_ptr + tok * stride_vt + h * stride_vh + dv, mask=mask_v)
    tl.store(v_cache_ptr + slot * stride_vcs + h * stride_vch + dv, v.to(v_cache_ptr.dtype.element_ty), mask=mask_v)


# fmt: on


def write_kv(
    key: torch.Tensor,  # [T, Hkv, Dk]
    value: torch.Tensor,  # [T, Hkv, Dv]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dk]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dv]
    slot_mapping: torch.Tensor,  # [T] int64; < 0 means "don't store"
) -> None:
    """Store this step's keys and values at their slots, in place, without a host sync."""
    num_tokens, num_kv_heads, head_dim = key.shape
    head_dim_v = value.shape[2]
    flat_k = k_cache.view(-1, num_kv_heads, head_dim)  # [num_slots, Hkv, Dk]
    flat_v = v_cache.view(-1, num_kv_heads, head_dim_v)  # [num_slots, Hkv, Dv]
    key, value = unit_last_stride(key), unit_last_stride(value)
    if num_tokens == 0:
        return
    # fmt: off
    _write_kv_kernel[(num_tokens,)](
        key, value, flat_k, flat_v, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        flat_k.stride(0), flat_k.stride(1), flat_v.stride(0), flat_v.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=dim_pad(head_dim), HEAD_DIM_V=head_dim_v, HEAD_DIM_V_PAD=dim_pad(head_dim_v),
    )
    # fmt: on


def dim_pad(head_dim: int) -> int:
    """A head dim padded to what tl.arange and tl.dot take (a power of two, at least 16)."""
    return max(16, triton.next_power_of_2(head_dim))


def unit_last_stride(x: torch.Tensor) -> torch.Tensor:  # [..., D]
    """``x`` itself when its last dimension is contiguous, else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()
