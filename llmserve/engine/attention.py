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

The rest of the contract transformers' attention interface hands over, per layer (``Features``):

- ``sliding_window`` W > 0: query position ``p`` sees keys ``p - W + 1 .. p`` (W positions, itself
  included), as transformers' ``sliding_window_overlay`` masks them (``kv_idx > q_idx - W``);
- ``softcap`` c > 0: scores become ``c * tanh(score / c)`` after scaling, before masking (Gemma 2);
- ``sinks`` ``[H]``: one learned logit per query head joins each row's softmax and takes its share of
  the weight without a value (gpt-oss's ``s_aux``);
- ``alibi_slopes`` ``[H]``: ``slope * (key position - query position)`` is added to the scores;
- keys and values may have different head dims (``k_cache [..., Dk]``, ``v_cache [..., Dv]``: the
  expanded k/v of multi-head latent attention); the output has the values' head dim.

This path syncs with the host (it reads the lengths) and is not CUDA-graph capturable; use it on CPU,
MPS, or as the CUDA reference. Plain causal attention (and a sliding window alone) calls
``scaled_dot_product_attention`` like transformers' ``sdpa`` implementation does, so float32 outputs
follow ``model.generate`` closely; soft-caps, sinks and ALiBi take an explicit float32 softmax as
transformers' ``eager`` implementation does.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SDPA_HAS_GQA = torch.__version__ >= (2, 5)  # type: ignore[operator]


@dataclass(frozen=True)
class Features:
    """What one layer's attention does beyond plain causal softmax (everything off by default)."""

    sliding_window: int = 0  # W > 0: a query sees its last W positions, itself included
    softcap: float = 0.0  # c > 0: scores -> c * tanh(scores / c)
    sinks: torch.Tensor | None = None  # [H], one learned logit per query head
    alibi_slopes: torch.Tensor | None = None  # [H], bias slope * (key position - query position)

    @property
    def is_plain(self) -> bool:
        """Plain causal softmax: no feature switched on."""
        return self.sliding_window <= 0 and not self.needs_explicit_softmax

    @property
    def needs_explicit_softmax(self) -> bool:
        """Whether SDPA (which takes a mask, not a soft-cap or a sink) cannot compute it."""
        return self.softcap > 0 or self.sinks is not None or self.alibi_slopes is not None


def write_kv(
    key: torch.Tensor,  # [T, Hkv, Dk]
    value: torch.Tensor,  # [T, Hkv, Dv]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dk]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dv]
    slot_mapping: torch.Tensor,  # [T] int64; < 0 means "don't store" (padding)
) -> None:
    """Store this step's keys and values at their slots, in place.

    Host-syncs when some slot is negative (boolean indexing); the Triton module has a
    graph-capturable version with the same contract.
    """
    num_kv_heads = k_cache.shape[2]
    # .view (not .reshape) so a non-viewable cache raises instead of writing into a copy.
    flat_k = k_cache.view(-1, num_kv_heads, k_cache.shape[3])  # [num_slots, Hkv, Dk]
    flat_v = v_cache.view(-1, num_kv_heads, v_cache.shape[3])  # [num_slots, Hkv, Dv]
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


def output_like(query: torch.Tensor, head_dim_v: int) -> torch.Tensor:  # [T, H, Dv], uninitialised
    """The attention output for ``query`` [T, H, Dk]: ``empty_like(query)`` (its strides kept) when
    values share the keys' head dim, else contiguous. Both kernels and the custom op's fake use it."""
    if head_dim_v == query.shape[2]:
        return torch.empty_like(query)
    return query.new_empty(query.shape[0], query.shape[1], head_dim_v)


def _sdpa(
    query: torch.Tensor,  # [N, H, Lq, Dk]
    key: torch.Tensor,  # [N, Hkv, Lk, Dk]
    value: torch.Tensor,  # [N, Hkv, Lk, Dv]
    mask: torch.Tensor | None,  # [N or 1, 1, Lq, Lk] bool, True = attend
    scale: float,
    is_causal: bool = False,
) -> torch.Tensor:  # [N, H, Lq, Dv]
    """SDPA with grouped-query heads (native ``enable_gqa`` needs torch >= 2.5)."""
    num_groups = query.shape[1] // key.shape[1]
    if num_groups > 1 and not _SDPA_HAS_GQA:  # pragma: no cover - torch 2.4
        key = key.repeat_interleave(num_groups, dim=1)
        value = value.repeat_interleave(num_groups, dim=1)
        num_groups = 1
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=num_groups > 1
    )


def _visible(
    q_pos: torch.Tensor,  # [N, Lq] position of each query row
    num_keys: int,
    sliding_window: int,
) -> torch.Tensor:  # [N, 1, Lq, Lk] bool, True = attend
    """Causal (and windowed) visibility of keys ``0 .. num_keys - 1`` from each query row."""
    k_pos = torch.arange(num_keys, device=q_pos.device)
    delta = q_pos[:, None, :, None] - k_pos  # [N, 1, Lq, Lk], query position minus key position
    visible = delta >= 0
    if sliding_window > 0:
        visible &= delta < sliding_window
    return visible


def _explicit_softmax(
    query: torch.Tensor,  # [N, H, Lq, Dk]
    key: torch.Tensor,  # [N, Hkv, Lk, Dk]
    value: torch.Tensor,  # [N, Hkv, Lk, Dv]
    q_pos: torch.Tensor,  # [N, Lq]
    scale: float,
    features: Features,
) -> torch.Tensor:  # [N, H, Lq, Dv]
    """Attention with soft-caps, sinks and ALiBi, in float32 as transformers' eager path does."""
    num_groups = query.shape[1] // key.shape[1]
    key = key.float().repeat_interleave(num_groups, dim=1)  # [N, H, Lk, Dk]
    value = value.float().repeat_interleave(num_groups, dim=1)  # [N, H, Lk, Dv]
    scores = query.float() @ key.transpose(-1, -2) * scale  # [N, H, Lq, Lk]
    if features.softcap > 0:
        scores = torch.tanh(scores / features.softcap) * features.softcap
    if features.alibi_slopes is not None:
        k_pos = torch.arange(key.shape[2], device=query.device)
        distance = (k_pos - q_pos[:, None, :, None]).float()  # [N, 1, Lq, Lk], <= 0 where visible
        scores = scores + features.alibi_slopes.float()[None, :, None, None] * distance
    scores = scores.masked_fill(~_visible(q_pos, key.shape[2], features.sliding_window), float("-inf"))
    if features.sinks is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        sinks = features.sinks.float()[None, :, None, None].expand(*scores.shape[:3], 1)  # [N, H, Lq, 1]
        probs = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]
    return (probs @ value).to(query.dtype)


def _attend(
    query: torch.Tensor,  # [N, H, Lq, Dk]
    key: torch.Tensor,  # [N, Hkv, Lk, Dk]
    value: torch.Tensor,  # [N, Hkv, Lk, Dv]
    q_pos: torch.Tensor,  # [N, Lq], each row's position; keys past it are masked
    scale: float,
    features: Features,
) -> torch.Tensor:  # [N, H, Lq, Dv]
    """Masked attention of query rows at ``q_pos`` over keys ``0 .. Lk - 1``."""
    if features.needs_explicit_softmax:
        return _explicit_softmax(query, key, value, q_pos, scale, features)
    return _sdpa(query, key, value, _visible(q_pos, key.shape[2], features.sliding_window), scale)


def _attend_decodes(
    out: torch.Tensor,  # [T, H, Dv], written in place
    query: torch.Tensor,  # [T, H, Dk]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dk]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dv]
    rows: list[int],
    seqs: list[int],
    lens: list[int],
    block_tables: torch.Tensor,  # [B, max_blocks] int
    scale: float,
    features: Features,
) -> None:
    """One batched attention call for all single-token sequences, keys padded to the longest (with a
    window: each sequence's keys from the block holding its window's first position)."""
    device = query.device
    # A step of decodes only (the common one) takes every row and table in order: no index tensors
    # to build and select with, per layer. (Rows and sequences come in increasing order, so as many
    # as there are means all of them.)
    every_row = len(rows) == query.shape[0]
    if len(seqs) == block_tables.shape[0]:
        tables = block_tables  # [N, max_blocks]
    else:
        tables = block_tables.index_select(0, torch.tensor(seqs, device=block_tables.device, dtype=torch.long))
    row_index = None if every_row else torch.tensor(rows, device=device, dtype=torch.long)
    q = (query if row_index is None else query.index_select(0, row_index)).unsqueeze(2)  # [N, H, 1, Dk]
    if features.sliding_window > 0:  # skip the blocks below every window; positions count from there
        block_size = k_cache.shape[1]
        first_blocks = [max(0, length - features.sliding_window) // block_size for length in lens]
        lens = [length - first * block_size for length, first in zip(lens, first_blocks, strict=True)]
        columns = torch.tensor(first_blocks, device=tables.device)[:, None] + torch.arange(
            -(-max(lens) // block_size), device=tables.device)  # [N, blocks of the longest]
        tables = tables.gather(1, columns.clamp(max=tables.shape[1] - 1))  # past a table's end: masked keys
    max_len = max(lens)
    key = gather_kv(k_cache, tables, max_len).to(query.dtype)  # [N, Hkv, max_len, Dk]
    value = gather_kv(v_cache, tables, max_len).to(query.dtype)  # [N, Hkv, max_len, Dv]
    if features.is_plain:
        mask = None
        if min(lens) != max_len:
            lens_t = torch.tensor(lens, device=device)
            mask = (torch.arange(max_len, device=device) < lens_t[:, None])[:, None, None, :]  # [N,1,1,L]
        result = _sdpa(q, key, value, mask, scale)  # [N, H, 1, Dv]
    else:  # each query sits at the last of its sequence's (gathered) positions
        q_pos = torch.tensor(lens, device=device)[:, None] - 1  # [N, 1]
        result = _attend(q, key, value, q_pos, scale, features)
    if row_index is None:
        out.copy_(result.squeeze(2))
    else:
        out.index_copy_(0, row_index, result.squeeze(2).to(out.dtype))


def _attend_prefill(
    query: torch.Tensor,  # [qlen, H, Dk]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dk]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dv]
    block_table: torch.Tensor,  # [1, max_blocks] int
    context_len: int,
    scale: float,
    features: Features,
) -> torch.Tensor:  # [qlen, H, Dv]
    """Causal attention of one sequence's chunk, after ``context_len - qlen`` cached positions."""
    qlen = query.shape[0]
    block_size = k_cache.shape[1]
    first_block = 0
    if features.sliding_window > 0:  # blocks below every row's window are never read
        first_block = max(0, context_len - qlen - features.sliding_window + 1) // block_size
    first_key = first_block * block_size
    key = gather_kv(k_cache, block_table[:, first_block:], context_len - first_key)
    value = gather_kv(v_cache, block_table[:, first_block:], context_len - first_key)
    key, value = key.to(query.dtype), value.to(query.dtype)  # [1, Hkv, L, D*]
    q = query.transpose(0, 1).unsqueeze(0)  # [1, H, qlen, Dk]
    if qlen == context_len and features.is_plain:  # no cached prefix: plain causal, as transformers runs a prompt
        result = _sdpa(q, key, value, None, scale, is_causal=True)
    else:
        q_pos = torch.arange(context_len - qlen - first_key, context_len - first_key, device=query.device)
        # Positions counted from first_key: windows and ALiBi distances are differences of positions.
        result = _attend(q, key, value, q_pos[None], scale, features)
    return result.squeeze(0).transpose(0, 1)


def decode_gather(
    context_lens: list[int],  # [B], each sequence's positions including its new token
    block_tables: torch.Tensor,  # [B, max_blocks] int
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # slots [B, L] int64, mask [B, 1, 1, L] bool
    """For a step where every sequence decodes one token: the cache slot of each sequence's positions
    0 .. L - 1 (L the longest; past a sequence's end, whatever its table's padding points at) and
    which of them it sees. Made once per step and shared by every plain layer; the mask is kept even
    when all lengths are equal, so a compiled forward sees one input signature."""
    longest = max(context_lens)
    device = block_tables.device
    positions = torch.arange(longest, device=device)
    blocks = block_tables[:, : -(-longest // block_size)].to(torch.long)  # [B, blocks of the longest]
    slots = blocks.repeat_interleave(block_size, dim=1)[:, :longest] * block_size + positions % block_size
    lens = torch.tensor(context_lens, device=device)
    mask = (positions < lens[:, None])[:, None, None, :]
    return slots, mask


def _attend_gathered(
    query: torch.Tensor,  # [B, H, Dk], one row per sequence
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dk]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dv]
    slots: torch.Tensor,  # [B, L] int64
    mask: torch.Tensor,  # [B, 1, 1, L] bool
    scale: float,
) -> torch.Tensor:  # [B, H, Dv]
    """Plain attention of one query row per sequence over the keys at ``slots``."""
    num_seqs, longest = slots.shape
    flat = slots.reshape(-1)
    key = k_cache.view(-1, *k_cache.shape[2:]).index_select(0, flat).view(num_seqs, longest, *k_cache.shape[2:])
    value = v_cache.view(-1, *v_cache.shape[2:]).index_select(0, flat).view(num_seqs, longest, *v_cache.shape[2:])
    key, value = key.transpose(1, 2).to(query.dtype), value.transpose(1, 2).to(query.dtype)  # [B, Hkv, L, D*]
    return _sdpa(query.unsqueeze(2), key, value, mask, scale).squeeze(2)


def paged_attention(
    query: torch.Tensor,  # [T, H, Dk]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dk]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, Dv]
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32
    context_lens: torch.Tensor,  # [B] int32, KV positions including this step's tokens
    block_tables: torch.Tensor,  # [B, max_blocks] int32, padded with any block id
    scale: float,
    max_seqlen_q: int,
    sliding_window: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,  # [H]
    alibi_slopes: torch.Tensor | None = None,  # [H]
    decode_slots: torch.Tensor | None = None,  # [B, L] int64, see decode_gather
    decode_mask: torch.Tensor | None = None,  # [B, 1, 1, L] bool
) -> torch.Tensor:  # [T, H, Dv], query dtype
    """Causal attention of each sequence's new tokens over its cached positions (torch path).

    Single-token (decode) sequences go through one batched call; longer chunks through one
    call each. ``max_seqlen_q`` is accepted for parity with the Triton path and not needed here.
    The feature arguments are described in the module docstring; their defaults switch them off.
    A step of decodes only may bring its `decode_gather` (made once for all layers), which plain
    layers use instead of working out the same addresses each.
    """
    del max_seqlen_q
    features = Features(sliding_window, softcap, sinks, alibi_slopes)
    if decode_slots is not None and decode_mask is not None and features.is_plain:
        return _attend_gathered(query, k_cache, v_cache, decode_slots, decode_mask, scale)
    cu = cu_seqlens_q.tolist()
    lens = context_lens.tolist()
    out = output_like(query, v_cache.shape[3]).zero_()
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
            query[start:end], k_cache, v_cache, block_tables[seq : seq + 1], length, scale, features
        )
    if decode_rows:
        _attend_decodes(
            out, query, k_cache, v_cache, decode_rows, decode_seqs, decode_lens, block_tables, scale, features
        )
    return out


def is_triton_usable(device: torch.device) -> bool:
    """Whether :mod:`llmserve.engine.triton_attention` can serve ``device`` (CUDA with Triton)."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None
