"""Attention over the paged KV cache: the pure-torch path (any device).

Cache layout, per layer: ``k_cache`` and ``v_cache`` are ``[num_blocks, block_size, num_kv_heads, head_dim]``.
Token ``p`` of a sequence lives in block ``block_table[p // block_size]`` at offset ``p % block_size``;
its flat *slot* is ``block_id * block_size + offset``.

One engine step packs the new tokens of ``B`` sequences into a flat batch of ``T`` tokens. Sequence
``b`` owns query rows ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]``; ``context_lens[b]`` counts its KV
positions *including* this step's tokens (already stored by :func:`write_kv`), so query ``i`` of it
sits at position ``context_lens[b] - qlen_b + i`` and sees positions ``0..`` that one (causal,
bottom-right aligned).

Conventions shared with :mod:`llmserve.engine.triton_attention` (the CUDA fast path, same contract):

- a sequence with ``context_lens[b] == 0`` (a padding sequence) yields zero rows;
- rows at or past ``cu_seqlens_q[-1]`` belong to no sequence: zero here, unspecified on the Triton path.

This path syncs with the host (it reads the lengths) and is not CUDA-graph capturable; use it on CPU,
MPS, or as the CUDA reference. It calls ``scaled_dot_product_attention`` like transformers' ``sdpa``
implementation does, so float32 outputs follow ``model.generate`` closely.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

_SDPA_HAS_GQA = torch.__version__ >= (2, 5)  # type: ignore[operator]


def write_kv(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64; < 0 means "don't store" (padding)
) -> None:
    """Store this step's keys and values at their slots, in place.

    Host-syncs when some slot is negative (boolean indexing); the Triton module has a
    graph-capturable version with the same contract.
    """
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    # .view (not .reshape) so a non-viewable cache raises instead of writing into a copy.
    flat_k = k_cache.view(-1, num_kv_heads, head_dim)  # [num_slots, Hkv, D]
    flat_v = v_cache.view(-1, num_kv_heads, head_dim)  # [num_slots, Hkv, D]
    slots = slot_mapping.to(device=k_cache.device, dtype=torch.long)
    is_stored = slots >= 0
    if not bool(is_stored.all()):
        key, value, slots = key[is_stored], value[is_stored], slots[is_stored]
    flat_k.index_copy_(0, slots, key.to(k_cache.dtype))
    flat_v.index_copy_(0, slots, value.to(v_cache.dtype))


def gather_kv(
    cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [N, max_blocks] int
    num_positions: int,
) -> torch.Tensor:  # [N, Hkv, num_positions, D]
    """The first ``num_positions`` cache entries of each of ``N`` block tables, head-major."""
    num_seqs, block_size = block_tables.shape[0], cache.shape[1]
    num_blocks = -(-num_positions // block_size)
    blocks = block_tables[:, :num_blocks].reshape(-1).to(dtype=torch.long)  # [N * num_blocks]
    gathered = cache.index_select(
        0, blocks
    )  # [N * num_blocks, block_size, Hkv, D]; faster than cache[2-D index]
    gathered = gathered.view(num_seqs, num_blocks * block_size, *cache.shape[2:])[:, :num_positions]
    return gathered.transpose(1, 2)


def _sdpa(
    query: torch.Tensor,  # [N, H, Lq, D]
    key: torch.Tensor,  # [N, Hkv, Lk, D]
    value: torch.Tensor,  # [N, Hkv, Lk, D]
    mask: torch.Tensor | None,  # [N or 1, 1, Lq, Lk] bool, True = attend
    scale: float,
    is_causal: bool = False,
) -> torch.Tensor:  # [N, H, Lq, D]
    """SDPA with grouped-query heads (native ``enable_gqa`` needs torch >= 2.5)."""
    num_groups = query.shape[1] // key.shape[1]
    if num_groups > 1 and not _SDPA_HAS_GQA:  # pragma: no cover - torch 2.4
        key = key.repeat_interleave(num_groups, dim=1)
        value = value.repeat_interleave(num_groups, dim=1)
        num_groups = 1
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=num_groups > 1
    )


def _attend_decodes(
    out: torch.Tensor,  # [T, H, D], written in place
    query: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    rows: list[int],
    seqs: list[int],
    lens: list[int],
    block_tables: torch.Tensor,  # [B, max_blocks] int
    scale: float,
) -> None:
    """One batched SDPA call for all single-token sequences, keys padded to the longest."""
    device = query.device
    max_len = max(lens)
    seq_index = torch.tensor(seqs, device=block_tables.device, dtype=torch.long)
    row_index = torch.tensor(rows, device=device, dtype=torch.long)
    tables = block_tables.index_select(0, seq_index)  # [N, max_blocks]
    key = gather_kv(k_cache, tables, max_len)  # [N, Hkv, max_len, D]
    value = gather_kv(v_cache, tables, max_len)  # [N, Hkv, max_len, D]
    mask = None
    if min(lens) != max_len:
        lens_t = torch.tensor(lens, device=device)
        mask = (torch.arange(max_len, device=device) < lens_t[:, None])[:, None, None, :]  # [N,1,1,L]
    q = query.index_select(0, row_index).unsqueeze(2)  # [N, H, 1, D]
    result = _sdpa(q, key.to(q.dtype), value.to(q.dtype), mask, scale)  # [N, H, 1, D]
    out.index_copy_(0, row_index, result.squeeze(2).to(out.dtype))


def _attend_prefill(
    query: torch.Tensor,  # [qlen, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_table: torch.Tensor,  # [1, max_blocks] int
    context_len: int,
    scale: float,
) -> torch.Tensor:  # [qlen, H, D]
    """Causal attention of one sequence's chunk, after ``context_len - qlen`` cached positions."""
    qlen = query.shape[0]
    key = gather_kv(k_cache, block_table, context_len).to(query.dtype)  # [1, Hkv, L, D]
    value = gather_kv(v_cache, block_table, context_len).to(query.dtype)  # [1, Hkv, L, D]
    q = query.transpose(0, 1).unsqueeze(0)  # [1, H, qlen, D]
    if qlen == context_len:  # no cached prefix: plain causal, as transformers runs a prompt
        result = _sdpa(q, key, value, None, scale, is_causal=True)
    else:
        positions = torch.arange(context_len - qlen, context_len, device=query.device)  # [qlen]
        visible = torch.arange(context_len, device=query.device)[None, :] <= positions[:, None]
        result = _sdpa(q, key, value, visible[None, None], scale)
    return result.squeeze(0).transpose(0, 1)


def paged_attention(
    query: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32
    context_lens: torch.Tensor,  # [B] int32, KV positions including this step's tokens
    block_tables: torch.Tensor,  # [B, max_blocks] int32, padded with any block id
    scale: float,
    max_seqlen_q: int,
) -> torch.Tensor:  # [T, H, D], query dtype
    """Causal attention of each sequence's new tokens over its cached positions (torch path).

    Single-token (decode) sequences go through one batched SDPA call; longer chunks through one
    call each. ``max_seqlen_q`` is accepted for parity with the Triton path and not needed here.
    """
    del max_seqlen_q
    cu = cu_seqlens_q.tolist()
    lens = context_lens.tolist()
    out = torch.zeros_like(query)
    decode_rows: list[int] = []
    decode_seqs: list[int] = []
    decode_lens: list[int] = []
    for seq, (start, end, length) in enumerate(zip(cu[:-1], cu[1:], lens, strict=True)):
        if length <= 0 or end <= start:
            continue
        if end - start == 1:
            decode_rows.append(start)
            decode_seqs.append(seq)
            decode_lens.append(length)
            continue
        out[start:end] = _attend_prefill(
            query[start:end], k_cache, v_cache, block_tables[seq : seq + 1], length, scale
        )
    if decode_rows:
        _attend_decodes(
            out, query, k_cache, v_cache, decode_rows, decode_seqs, decode_lens, block_tables, scale
        )
    return out


def is_triton_usable(device: torch.device) -> bool:
    """Whether :mod:`llmserve.engine.triton_attention` can serve ``device`` (CUDA with Triton)."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None
