"""Triton kernels for attention over the paged KV cache: the CUDA fast path.

Same contract as :mod:`llmserve.engine.attention` (read its docstring for the cache layout and the
batch packing), with one difference: output rows at or past ``cu_seqlens_q[-1]`` are left unwritten.

One kernel serves every batch. A program owns one sequence, one KV head and a tile of that
sequence's query tokens; its ``BLOCK_M`` rows pack ``BLOCK_M // group`` tokens times the ``group``
query heads that share the KV head, so every K/V tile is read once per group (GQA). It walks the
sequence's cache in tiles of ``BLOCK_N`` positions through the block table, with an online softmax
accumulated in fp32: first the tiles every row of the tile sees in full (no mask), then the causal
edge. Decode batches (``max_seqlen_q == 1``) launch it with ``BLOCK_M`` = the group padded to 16 and,
when sequences x KV heads leave the GPU idle, cut each sequence's positions into spans of a fixed
length (from the block table's width) handled by separate programs (flash-decoding): a sequence that
fits one span is written directly, the partial sums of longer ones are merged by a second kernel.

Everything is CUDA-graph capturable: no host syncs, grids and scratch sizes come from tensor shapes
and Python ints only. ``write_kv`` here is a graph-safe store (negative slots skipped in-kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llmserve.engine.attention import output_like

_LOG2E = 1.4426950408889634
_LOG2E_K: tl.constexpr = tl.constexpr(_LOG2E)  # the same, readable inside kernels
_MIN_TOKENS_PER_SPLIT = 64  # shorter splits cost more in partial results than they gain
_MAX_SPLITS = 64

# Kernel signatures and launches keep their arguments grouped by role (pointers, strides, constexprs)
# instead of one per line, so ruff format is switched off around them.
# fmt: off


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, k_ptr, v_ptr, bt_row_ptr, n0, ctx, pos, k_head_off, v_head_off, d, d_ok, dv, dv_ok,
    qk_scale, stride_kb, stride_ks, stride_vb, stride_vs, window, softcap, alibi,
    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr, PRECISION: tl.constexpr,
    IS_WINDOWED: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_ALIBI: tl.constexpr,
):
    """One step of the online softmax over cache positions ``n0 .. n0 + BLOCK_N``.

    Scores are in log2 units (scaled by log2 e): ``softcap`` and ``alibi`` (per row) arrive in them.
    """
    n = n0 + tl.arange(0, BLOCK_N)
    n_ok = n < ctx
    blk = tl.load(bt_row_ptr + n // PAGE, mask=n_ok, other=0).to(tl.int64)
    offset = n % PAGE
    k = tl.load(k_ptr + (blk * stride_kb + offset * stride_ks + k_head_off)[:, None] + d[None, :],
                mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
    if HAS_SOFTCAP:  # softcap * tanh(s / softcap), tanh from one exp2 of a non-positive number
        x = s / softcap
        e = tl.exp2(tl.minimum(x, -x) * (2.0 * _LOG2E_K))
        s = softcap * tl.where(x < 0, -1.0, 1.0) * (1.0 - e) / (1.0 + e)
    if HAS_ALIBI:
        s += alibi[:, None] * (n[None, :] - pos[:, None]).to(tl.float32)
    if MASKED:
        visible = (n[None, :] <= pos[:, None]) & n_ok[None, :]
        if IS_WINDOWED:
            visible = visible & (n[None, :] > pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_ptr + (blk * stride_vb + offset * stride_vs + v_head_off)[:, None] + dv[None, :],
                mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _tile_rows(tile, kv_head, qlen, GROUP: tl.constexpr, BLOCK_M: tl.constexpr):
    """A tile's rows: token index within the sequence, query head, and whether the row is real."""
    TOKENS: tl.constexpr = BLOCK_M // GROUP
    rows = tl.arange(0, BLOCK_M)
    tok = tile * TOKENS + rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    return tok, head, (rows < TOKENS * GROUP) & (tok < qlen)


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, part_count_ptr, sinks_ptr, alibi_ptr,
    cu_ptr, ctx_ptr, bt_ptr, qk_scale, num_heads, num_splits, split_len, window, softcap,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_ot, stride_oh, stride_bt,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr, HEAD_DIM_V: tl.constexpr, HEAD_DIM_V_PAD: tl.constexpr, PAGE: tl.constexpr,
    IS_SPLIT: tl.constexpr, PRECISION: tl.constexpr, IS_WINDOWED: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_SINKS: tl.constexpr, HAS_ALIBI: tl.constexpr,
):
    """Grid: (query tiles x splits, sequences, KV heads).

    Split ``s`` covers key positions ``[base + s * split_len, base + (s + 1) * split_len)`` of the
    tile's range, ``base`` being 0, or with a window the first position any row of the tile sees; a
    tile whose range fits one split writes the output itself, others leave partial sums to merge and
    split 0 records how many splits each row used. Feature flags are constexpr: off, they compile away.
    """
    TOKENS: tl.constexpr = BLOCK_M // GROUP
    tile = tl.program_id(0) // num_splits
    split = tl.program_id(0) % num_splits
    seq = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_start = tl.load(cu_ptr + seq)
    qlen = tl.load(cu_ptr + seq + 1) - q_start
    ctx = tl.load(ctx_ptr + seq)
    lo = ctx - qlen + tile * TOKENS  # every row sees all keys below lo (within its window)
    hi = tl.minimum(ctx, lo + TOKENS)  # no row sees a key at or above hi
    base = 0
    if IS_WINDOWED:  # the tile's lowest row sees keys from lo - window + 1 on
        base = (tl.maximum(lo - window + 1, 0) // BLOCK_N) * BLOCK_N
    num_used = tl.maximum((hi - base + split_len - 1) // split_len, 1)
    if (tile * TOKENS >= qlen) | (split >= num_used):
        return
    tok, head, row_ok = _tile_rows(tile, kv_head, qlen, GROUP, BLOCK_M)
    d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = d < HEAD_DIM
    dv = tl.arange(0, HEAD_DIM_V_PAD)
    dv_ok = dv < HEAD_DIM_V
    q = tl.load(q_ptr + ((q_start + tok) * stride_qt + head * stride_qh)[:, None] + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    pos = ctx - qlen + tok  # [BLOCK_M] each row's position; it sees keys 0..pos (pos - window + 1..pos)
    alibi = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_ALIBI:
        alibi = tl.load(alibi_ptr + head, mask=row_ok, other=0.0).to(tl.float32) * _LOG2E_K
    start = base + split * split_len
    end = tl.minimum(hi, start + split_len)
    lo_aligned = (lo // BLOCK_N) * BLOCK_N
    acc = tl.zeros([BLOCK_M, HEAD_DIM_V_PAD], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: keeps exp2(m_i - m_new) NaN-free
    bt_row_ptr = bt_ptr + seq * stride_bt
    k_head_off = kv_head * stride_kh
    v_head_off = kv_head * stride_vh
    if IS_WINDOWED:  # every tile has a window edge: masked throughout
        for n0 in range(start, end, BLOCK_N):
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, k_ptr, v_ptr, bt_row_ptr, n0, ctx, pos, k_head_off, v_head_off, d, d_ok, dv,
                dv_ok, qk_scale, stride_kb, stride_ks, stride_vb, stride_vs, window, softcap, alibi,
                True, BLOCK_N, PAGE, PRECISION, True, HAS_SOFTCAP, HAS_ALIBI,
            )
    else:
        for n0 in range(start, tl.minimum(end, lo_aligned), BLOCK_N):
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, k_ptr, v_ptr, bt_row_ptr, n0, ctx, pos, k_head_off, v_head_off, d, d_ok, dv,
                dv_ok, qk_scale, stride_kb, stride_ks, stride_vb, stride_vs, window, softcap, alibi,
                False, BLOCK_N, PAGE, PRECISION, False, HAS_SOFTCAP, HAS_ALIBI,
            )
        for n0 in range(tl.maximum(start, lo_aligned), end, BLOCK_N):
            acc, l_i, m_i = _attend_tile(
                acc, l_i, m_i, q, k_ptr, v_ptr, bt_row_ptr, n0, ctx, pos, k_head_off, v_head_off, d, d_ok, dv,
                dv_ok, qk_scale, stride_kb, stride_ks, stride_vb, stride_vs, window, softcap, alibi,
                True, BLOCK_N, PAGE, PRECISION, False, HAS_SOFTCAP, HAS_ALIBI,
            )
    used = tl.zeros([BLOCK_M], dtype=tl.int32) + num_used  # per row: the interpreter rejects scalar masks
    denom = l_i
    result_acc = acc
    if HAS_SINKS:  # the sink's weight joins the denominator of rows written here (merged ones: later)
        sink = tl.load(sinks_ptr + head, mask=row_ok, other=0.0).to(tl.float32) * _LOG2E_K
        m_all = tl.maximum(m_i, sink)
        denom = l_i * tl.exp2(m_i - m_all) + tl.exp2(sink - m_all)
        result_acc = acc * tl.exp2(m_i - m_all)[:, None]
    result = result_acc / tl.where(denom > 0.0, denom, 1.0)[:, None]  # rows that see nothing stay 0
    tl.store(out_ptr + ((q_start + tok) * stride_ot + head * stride_oh)[:, None] + dv[None, :],
             result.to(out_ptr.dtype.element_ty), mask=(row_ok & (used == 1))[:, None] & dv_ok[None, :])
    if IS_SPLIT:
        part = ((q_start + tok) * num_heads + head) * num_splits + split  # [BLOCK_M]
        is_part = row_ok & (used > 1)
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM_V_PAD + dv[None, :], acc, mask=is_part[:, None])
        tl.store(part_m_ptr + part, m_i, mask=is_part)
        tl.store(part_l_ptr + part, l_i, mask=is_part)
        is_first = (tl.zeros([BLOCK_M], dtype=tl.int32) + split) == 0
        tl.store(part_count_ptr + (q_start + tok) * num_heads + head, used, mask=row_ok & is_first)


@triton.jit
def _merge_splits_kernel(
    part_acc_ptr, part_m_ptr, part_l_ptr, part_count_ptr, out_ptr, sinks_ptr, cu_ptr, num_seqs, num_heads,
    num_splits, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    """Grid: (query rows, query heads). Rescales a row's partial sums to a common maximum (the sink's
    logit taking part); rows written directly (one split used) and rows past the last sequence are skipped."""
    row = tl.program_id(0)
    head = tl.program_id(1)
    if row >= tl.load(cu_ptr + num_seqs):
        return
    num_used = tl.load(part_count_ptr + row * num_heads + head)
    if num_used <= 1:
        return
    split = tl.arange(0, SPLITS_PAD)
    split_ok = split < num_used
    part = (row * num_heads + head) * num_splits + split  # [SPLITS_PAD]
    m = tl.load(part_m_ptr + part, mask=split_ok, other=float("-inf"))
    m_max = tl.max(m, 0)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head).to(tl.float32) * _LOG2E_K
        m_max = tl.maximum(m_max, sink)
    weight = tl.exp2(m - m_max)  # [SPLITS_PAD]
    denom = tl.sum(weight * tl.load(part_l_ptr + part, mask=split_ok, other=0.0), 0)
    if HAS_SINKS:
        denom += tl.exp2(sink - m_max)
    d = tl.arange(0, HEAD_DIM_PAD)
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM_PAD + d[None, :], mask=split_ok[:, None], other=0.0)
    result = tl.sum(acc * weight[:, None], 0) / tl.where(denom > 0.0, denom, 1.0)
    tl.store(out_ptr + row * stride_ot + head * stride_oh + d, result.to(out_ptr.dtype.element_ty),
             mask=d < HEAD_DIM)


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
    key, value = _unit_last_stride(key), _unit_last_stride(value)
    if num_tokens == 0:
        return
    # fmt: off
    _write_kv_kernel[(num_tokens,)](
        key, value, flat_k, flat_v, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        flat_k.stride(0), flat_k.stride(1), flat_v.stride(0), flat_v.stride(1),
        NUM_KV_HEADS=num_kv_heads, HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=_dim_pad(head_dim), HEAD_DIM_V=head_dim_v, HEAD_DIM_V_PAD=_dim_pad(head_dim_v),
    )
    # fmt: on


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
    query = _unit_last_stride(query)
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
    head_dim_pad, head_dim_v_pad = _dim_pad(head_dim), _dim_pad(head_dim_v)
    part_acc = part_m = part_l = part_count = out  # placeholders, unused without splits
    if is_split:
        part_acc = query.new_empty(num_tokens, num_heads, plan.num_splits, head_dim_v_pad, dtype=torch.float32)
        part_m = query.new_empty(num_tokens, num_heads, plan.num_splits, dtype=torch.float32)
        part_l = torch.empty_like(part_m)
        part_count = query.new_empty(num_tokens, num_heads, dtype=torch.int32)
    # fmt: off
    _paged_attention_kernel[(plan.num_q_tiles * plan.num_splits, num_seqs, num_kv_heads)](
        query, k_cache, v_cache, out, part_acc, part_m, part_l, part_count,
        out if sinks is None else sinks, out if alibi_slopes is None else alibi_slopes,
        cu_seqlens_q, context_lens, block_tables, scale * _LOG2E, num_heads, plan.num_splits, plan.split_len,
        sliding_window, softcap * _LOG2E,
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
        _merge_splits_kernel[(num_tokens, num_heads)](
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


def _dim_pad(head_dim: int) -> int:
    """A head dim padded to what tl.arange and tl.dot take (a power of two, at least 16)."""
    return max(16, triton.next_power_of_2(head_dim))


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:  # [..., D]
    """``x`` itself when its last dimension is contiguous, else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()
