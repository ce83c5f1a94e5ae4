"""Attention over the paged KV cache with Triton kernels: the CUDA fast path (launch side).

Same contract as :mod:`llmserve.engine.attention` (read its docstring for the cache layout and the
batch packing), with one difference: output rows at or past ``cu_seqlens_q[-1]`` are left unwritten.
This module checks shapes, plans a launch and starts the kernels of
:mod:`llmserve.engine.triton_attention_kernels` (read its docstring for how a program walks the cache);
``write_kv`` (from :mod:`llmserve.engine.triton_kv_write`) is re-exported so the engine finds both
halves of the fast path here.

Decode batches (``max_seqlen_q == 1``) launch with ``BLOCK_M`` = the group padded to 16 and, when
sequences x KV heads leave the GPU idle, cut each sequence's positions into spans of a fixed length
(from the block table's width) handled by separate programs (flash-decoding), whose partial sums a
second kernel merges.

Everything is CUDA-graph capturable: no host syncs, grids and scratch sizes come from tensor shapes
and Python ints only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton

from llmserve.engine.attention import output_like
from llmserve.engine.triton_attention_kernels import LOG2E, merge_splits_kernel, paged_attention_kernel
from llmserve.engine.triton_kv_write import dim_pad, unit_last_stride, write_kv

__all__ = ["LaunchPlan", "paged_attention", "plan_launch", "write_kv"]

_MIN_TOKENS_PER_SPLIT = 64  # shorter splits cost more in partial results than they gain
_MAX_SPLITS = 64


def paged_attention(
    query: torch.Tensor,  # [T, H, Dk]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dk]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dv]
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32
    context_lens: torch.Tensor,  # [B] int32, KV positions including this step's tokens
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    scale: float,
    max_seqlen_q: int,
    sliding_window: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,  # [H]
    alibi_slopes: torch.Tensor | None = None,  # [H]
    out: torch.Tensor | None = None,  # [T, H, Dv], query dtype; allocated when None
    num_splits: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:  # [T, H, Dv]
    """Causal attention of each sequence's new tokens over its paged cache (Triton kernels).

    ``sliding_window``, ``softcap``, ``sinks`` and ``alibi_slopes`` as in the torch path (their
    defaults switch them off, and a kernel compiled without them does no work for them).
    ``num_splits`` splits each sequence's positions over that many programs (decode only by
    default: chosen from the batch and ``block_tables``' width when ``max_seqlen_q == 1``).
    ``block_m``/``block_n``/``num_warps`` override the launch configuration (tests and tuning).
    """
    num_tokens, num_heads, head_dim = query.shape
    _, page, num_kv_heads, head_dim_v = v_cache.shape
    num_seqs, max_blocks = block_tables.shape
    _check_inputs(query, k_cache, v_cache, num_kv_heads)
    if out is None:
        out = output_like(query, head_dim_v)
    elif out.shape != (num_tokens, num_heads, head_dim_v) or out.dtype != query.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {(num_tokens, num_heads, head_dim_v)} {query.dtype}, contiguous along head_dim")
    query = unit_last_stride(query)
    if num_tokens == 0 or num_seqs == 0:
        return out
    max_context = max_blocks * page
    if sliding_window > 0:  # what one tile's rows see at most (plus alignment): the splits cover that
        max_context = min(max_context, sliding_window + max_seqlen_q + 128)
    plan = plan_launch(
        query.device, num_seqs, num_heads, num_kv_heads, head_dim, max_context, max_seqlen_q,
        num_splits=num_splits, block_m=block_m, block_n=block_n, num_warps=num_warps,
    )  # fmt: skip
    is_split = plan.num_splits > 1
    head_dim_pad, head_dim_v_pad = dim_pad(head_dim), dim_pad(head_dim_v)
    part_acc = part_m = part_l = part_count = out  # placeholders, unused without splits
    if is_split:
        part_acc = query.new_empty(num_tokens, num_heads, plan.num_splits, head_dim_v_pad, dtype=torch.float32)
        part_m = query.new_empty(num_tokens, num_heads, plan.num_splits, dtype=torch.float32)
        part_l = torch.empty_like(part_m)
        part_count = query.new_empty(num_tokens, num_heads, dtype=torch.int32)
    # fmt: off
    paged_attention_kernel[(plan.num_q_tiles * plan.num_splits, num_seqs, num_kv_heads)](
        query, k_cache, v_cache, out, part_acc, part_m, part_l, part_count,
        out if sinks is None else sinks, out if alibi_slopes is None else alibi_slopes,
        cu_seqlens_q, context_lens, block_tables, scale * LOG2E, num_heads, plan.num_splits, plan.split_len,
        sliding_window, softcap * LOG2E,
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, HEAD_DIM=head_dim,
        HEAD_DIM_PAD=head_dim_pad, HEAD_DIM_V=head_dim_v, HEAD_DIM_V_PAD=head_dim_v_pad, PAGE=page,
        IS_SPLIT=is_split, PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        IS_WINDOWED=sliding_window > 0, HAS_SOFTCAP=softcap > 0, HAS_SINKS=sinks is not None,
        HAS_ALIBI=alibi_slopes is not None,
        num_warps=plan.num_warps, num_stages=2,
    )
    if is_split:
        merge_splits_kernel[(num_tokens, num_heads)](
            part_acc, part_m, part_l, part_count, out, out if sinks is None else sinks, cu_seqlens_q, num_seqs,
            num_heads, plan.num_splits, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim_v, HEAD_DIM_PAD=head_dim_v_pad,
            SPLITS_PAD=max(2, triton.next_power_of_2(plan.num_splits)), HAS_SINKS=sinks is not None,
        )
    # fmt: on
    return out


@dataclass(frozen=True)
class LaunchPlan:
    """Tile sizes and splits of one :func:`paged_attention` launch: a function of shapes only."""

    block_m: int  # query rows per program: tokens x the heads of one KV group
    block_n: int  # cache positions per inner step
    num_splits: int  # programs per (query tile, sequence, KV head) along the positions
    split_len: int  # positions per split; 2**30 (any context) when unsplit
    num_q_tiles: int  # query tiles of the longest sequence
    num_warps: int


def plan_launch(
    device: torch.device,
    num_seqs: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    max_context: int,
    max_seqlen_q: int,
    *,
    num_splits: int | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
) -> LaunchPlan:
    """Defaults measured on an H100 (``benchmarks/gpu_attention_check.py --sweep``); overrides win."""
    group = num_heads // num_kv_heads
    is_decode = max_seqlen_q <= 1
    block_m = max(
        block_m or (16 if is_decode else 128 if head_dim <= 64 else 64), triton.next_power_of_2(group)
    )
    if num_splits is None:
        num_splits = _choose_num_splits(device, num_seqs, num_kv_heads, max_context) if is_decode else 1
    if block_n is None:  # unsplit decode streams more positions per step (up to 15% faster at D=64)
        block_n = 128 if is_decode and num_splits == 1 and head_dim <= 64 else 64 if head_dim <= 128 else 32
    split_len = 2**30
    if num_splits > 1:
        split_len = triton.cdiv(triton.cdiv(max_context, block_n), num_splits) * block_n
    return LaunchPlan(
        block_m=block_m,
        block_n=block_n,
        num_splits=num_splits,
        split_len=split_len,
        num_q_tiles=triton.cdiv(max(max_seqlen_q, 1), block_m // group),
        num_warps=num_warps or (4 if block_m <= 64 else 8),
    )


def _choose_num_splits(device: torch.device, num_seqs: int, num_kv_heads: int, max_context: int) -> int:
    """Splits per sequence for decode: none once sequences x KV heads fill the multiprocessors, else
    about 4 programs per multiprocessor (measured best on an H100), each split >= 64 positions."""
    if device.type != "cuda":
        return 1
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    num_programs = num_seqs * num_kv_heads
    if num_programs >= num_sms:
        return 1
    wanted = math.ceil(4 * num_sms / num_programs)
    return max(1, min(wanted, max_context // _MIN_TOKENS_PER_SPLIT, _MAX_SPLITS))


def _check_inputs(
    query: torch.Tensor,  # [T, H, Dk]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dk]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dv]
    num_kv_heads: int,
) -> None:
    """Shape and dtype checks (metadata only, no host sync)."""
    if query.shape[1] % num_kv_heads:
        raise ValueError(f"query heads ({query.shape[1]}) must be a multiple of KV heads ({num_kv_heads})")
    if k_cache.shape[:3] != v_cache.shape[:3] or k_cache.shape[3] != query.shape[2]:
        raise ValueError(
            f"cache shapes {tuple(k_cache.shape)}/{tuple(v_cache.shape)} do not fit query {tuple(query.shape)}"
        )
    if not (query.dtype == k_cache.dtype == v_cache.dtype):
        raise ValueError(
            f"query and caches must share a dtype, got {query.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("caches must be contiguous along head_dim")
