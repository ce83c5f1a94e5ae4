"""Triton kernels of paged attention: the programs that :func:`llmserve.engine.triton_attention.paged_attention`
launches (shapes, checks and the launch plan live there; the cache layout in :mod:`llmserve.engine.attention`).

One kernel serves every batch. A program owns one sequence, one KV head and a tile of that
sequence's query tokens; its ``BLOCK_M`` rows pack ``BLOCK_M // group`` tokens times the ``group``
query heads that share the KV head, so every K/V tile is read once per group (GQA). It walks the
sequence's cache in tiles of ``BLOCK_N`` positions through the block table, with an online softmax
accumulated in fp32: first the tiles every row of the tile sees in full (no mask), then the causal
edge. When a launch splits each sequence's positions over several programs (flash-decoding), a
sequence that fits one split is written directly, and the partial sums of longer ones are merged by
:func:`merge_splits_kernel`.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are kept in log2 units: exp2 is the cheap exponential
_LOG2E_K: tl.constexpr = tl.constexpr(LOG2E)  # the same, readable inside kernels

# Kernel signatures keep their arguments grouped by role (pointers, strides, constexprs) instead of
# one per line, so ruff format is switched off around them.
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
def paged_attention_kernel(
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
def merge_splits_kernel(
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


# fmt: on
