"""The torch paged-attention path against a naive float64 reference built from the same data.

The batch builder and the reference live here; ``test_triton_attention.py`` loads them from this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from llmserve.engine import attention


@dataclass(frozen=True)
class Batch:
    """One engine step's attention inputs over a random paged cache."""

    query: torch.Tensor  # [T, H, D]
    new_key: torch.Tensor  # [T, Hkv, D]
    new_value: torch.Tensor  # [T, Hkv, D]
    slot_mapping: torch.Tensor  # [T] int64
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D], before this step's writes
    v_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    cu_seqlens_q: torch.Tensor  # [B + 1] int32
    context_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32
    max_seqlen_q: int
    scale: float


def make_batch(
    specs: list[tuple[int, int]],
    num_heads: int = 8,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    block_size: int = 4,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    head_dim_v: int | None = None,
) -> Batch:
    """``specs`` holds ``(num_cached, num_new)`` per sequence; ``(0, 1)`` with ``num_cached=-1`` is a
    padding sequence (context length 0). Blocks are a random permutation, so tables are
    non-contiguous; table padding and unused cache slots hold random values. Values have
    ``head_dim_v`` (default ``head_dim``) features, as multi-head latent attention's do."""
    head_dim_v = head_dim_v or head_dim
    gen = torch.Generator().manual_seed(seed)
    lens = [max(cached + new, 0) for cached, new in specs]
    blocks_per_seq = [-(-n // block_size) for n in lens]
    max_blocks = max(blocks_per_seq) + 2
    num_blocks = sum(blocks_per_seq) + 5
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.randint(0, num_blocks, (len(specs), max_blocks), generator=gen, dtype=torch.int32)
    slots: list[int] = []
    for seq, ((cached, new), count) in enumerate(zip(specs, blocks_per_seq, strict=True)):
        tables[seq, :count] = torch.tensor(perm[:count], dtype=torch.int32)
        perm = perm[count:]
        for pos in range(max(cached, 0), max(cached, 0) + new):
            slots.append(
                -1 if cached < 0 else int(tables[seq, pos // block_size]) * block_size + pos % block_size
            )
    qlens = [new for _, new in specs]
    num_tokens = sum(qlens)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    cache_shape = (num_blocks, block_size, num_kv_heads)
    return Batch(
        query=randn(num_tokens, num_heads, head_dim),
        new_key=randn(num_tokens, num_kv_heads, head_dim),
        new_value=randn(num_tokens, num_kv_heads, head_dim_v),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        k_cache=randn(*cache_shape, head_dim),
        v_cache=randn(*cache_shape, head_dim_v),
        cu_seqlens_q=torch.tensor([0, *torch.tensor(qlens).cumsum(0).tolist()], dtype=torch.int32),
        context_lens=torch.tensor(lens, dtype=torch.int32),
        block_tables=tables,
        max_seqlen_q=max(qlens),
        scale=head_dim**-0.5,
    )


def reference_cache(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The caches after this step's writes, placed one token at a time."""
    k_cache, v_cache = batch.k_cache.clone(), batch.v_cache.clone()
    block_size = k_cache.shape[1]
    for tok, slot in enumerate(batch.slot_mapping.tolist()):
        if slot >= 0:
            k_cache[slot // block_size, slot % block_size] = batch.new_key[tok]
            v_cache[slot // block_size, slot % block_size] = batch.new_value[tok]
    return k_cache, v_cache


def reference_attention(
    batch: Batch,
    sliding_window: int = 0,
    softcap: float = 0.0,
    sinks: torch.Tensor | None = None,  # [H]
    alibi_slopes: torch.Tensor | None = None,  # [H]
) -> torch.Tensor:  # [T, H, Dv] float64
    """Naive float64 attention, each query row at position ``pos`` against the keys ``0..pos`` looked
    up one by one: a dense score row, soft-capped, ALiBi-biased, masked outside the window, with the
    sink logit joining the softmax as an extra column that has no value."""
    k_cache, v_cache = (c.double() for c in reference_cache(batch))
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    query = batch.query.double()
    group = query.shape[1] // num_kv_heads
    out = torch.zeros(*query.shape[:2], v_cache.shape[-1], dtype=torch.float64)
    cu = batch.cu_seqlens_q.tolist()
    for seq, length in enumerate(batch.context_lens.tolist()):
        table = batch.block_tables[seq].tolist()
        keys = torch.stack(
            [k_cache[table[p // block_size], p % block_size] for p in range(length)] or [k_cache[0, 0]]
        )
        values = torch.stack(
            [v_cache[table[p // block_size], p % block_size] for p in range(length)] or [v_cache[0, 0]]
        )
        qlen = cu[seq + 1] - cu[seq]
        for i in range(qlen):
            pos = length - qlen + i
            if pos < 0:
                continue
            for head in range(query.shape[1]):
                scores = keys[: pos + 1, head // group] @ query[cu[seq] + i, head] * batch.scale  # [pos + 1]
                if softcap > 0:
                    scores = softcap * torch.tanh(scores / softcap)
                if alibi_slopes is not None:
                    scores = scores + float(alibi_slopes[head]) * torch.arange(-pos, 1, dtype=torch.float64)
                if sliding_window > 0:
                    scores[: max(0, pos + 1 - sliding_window)] = float("-inf")
                if sinks is not None:
                    scores = torch.cat([scores, torch.tensor([float(sinks[head])], dtype=torch.float64)])
                weights = torch.softmax(scores, dim=0)[: pos + 1]
                out[cu[seq] + i, head] = weights @ values[: pos + 1, head // group]
    return out


def written_cache(batch: Batch, write_kv: Callable[..., None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of the batch's caches after ``write_kv`` stored the new tokens."""
    k_cache, v_cache = batch.k_cache.clone(), batch.v_cache.clone()
    write_kv(batch.new_key, batch.new_value, k_cache, v_cache, batch.slot_mapping)
    return k_cache, v_cache


def tolerance(dtype: torch.dtype) -> float:
    """Max abs error allowed against the float64 reference (outputs are O(1))."""
    return {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]


# (name, specs, num_heads, num_kv_heads, head_dim, block_size)
CASES = [
    ("decode_block_edges", [(15, 1), (16, 1), (0, 1), (31, 1), (40, 1), (3, 1)], 8, 2, 32, 16),
    ("prefill_no_prefix", [(0, 5), (0, 16), (0, 33), (0, 2)], 8, 2, 32, 16),
    ("prefill_with_prefix", [(16, 7), (13, 20), (1, 2), (4, 4)], 8, 2, 32, 4),
    ("mixed", [(20, 1), (0, 9), (7, 12), (33, 1), (0, 1), (5, 3)], 8, 2, 32, 4),
    ("mha", [(9, 1), (0, 6), (3, 5)], 4, 4, 16, 4),
    ("group_of_3", [(6, 1), (0, 7), (11, 4)], 6, 2, 16, 4),
    ("mqa_head_dim_64", [(18, 1), (2, 9)], 4, 1, 64, 16),
    ("head_dim_40", [(5, 1), (3, 6)], 4, 2, 40, 8),
    ("padding_seq", [(10, 1), (-1, 1), (0, 3)], 4, 2, 16, 4),
]


MIXED = [(20, 1), (0, 9), (7, 12), (33, 1), (0, 1), (5, 3), (-1, 1)]
# (name, specs, num_heads, num_kv_heads, head_dim, head_dim_v, block_size, features); features hold
# plain numbers, the per-head ones as lists (see feature_kwargs).
FEATURE_CASES = [
    ("window_decode", [(20, 1), (3, 1), (40, 1), (0, 1), (-1, 1), (7, 1)], 8, 2, 32, 32, 4, {"sliding_window": 8}),
    ("window_prefill", [(0, 30), (13, 20), (25, 7), (5, 1)], 8, 2, 32, 32, 4, {"sliding_window": 6}),
    ("window_of_one", MIXED, 4, 2, 16, 16, 4, {"sliding_window": 1}),
    ("window_wider_than_context", MIXED, 4, 2, 16, 16, 4, {"sliding_window": 64}),
    ("softcap", MIXED, 8, 2, 32, 32, 4, {"softcap": 1.0}),
    ("sinks", MIXED, 8, 2, 32, 32, 4, {"sinks": [2.0, -1.0, 0.5, 3.0, -2.0, 1.0, 0.0, 4.0]}),
    ("alibi", MIXED, 8, 2, 32, 32, 4, {"alibi_slopes": [2.0 ** -(i + 1) for i in range(8)]}),
    ("mla_value_head_dim", MIXED, 4, 4, 24, 12, 4, {}),
    ("everything", MIXED, 4, 2, 16, 8, 4,
     {"sliding_window": 5, "softcap": 1.5, "sinks": [1.0, -0.5, 2.0, 0.0], "alibi_slopes": [0.5, 0.25, 0.1, 0.05]}),
]


def feature_kwargs(features: dict, device: torch.device | str = "cpu") -> dict:
    """The kernels' keyword arguments for a case's features: per-head lists become float32 tensors."""
    return {k: torch.tensor(v, dtype=torch.float32, device=device) if isinstance(v, list) else v
            for k, v in features.items()}


def feature_batch(name: str, specs: list[tuple[int, int]], heads: int, kv_heads: int, head_dim: int,
                  head_dim_v: int, block_size: int, dtype: torch.dtype) -> Batch:
    """A feature case's batch, its scores scaled up (x2) so soft-caps and sinks have something to change."""
    batch = make_batch(specs, heads, kv_heads, head_dim, block_size, dtype, seed=len(name), head_dim_v=head_dim_v)
    return Batch(**{**batch.__dict__, "scale": 2 * batch.scale})


def run_torch(batch: Batch, **features: object) -> torch.Tensor:
    """The torch kernels on ``batch``: write, then attend."""
    k_cache, v_cache = written_cache(batch, attention.write_kv)
    return attention.paged_attention(
        batch.query, k_cache, v_cache, batch.cu_seqlens_q, batch.context_lens, batch.block_tables,
        batch.scale, batch.max_seqlen_q, **features,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("name", "specs", "heads", "kv_heads", "head_dim", "head_dim_v", "block_size", "features"),
                         FEATURE_CASES, ids=[c[0] for c in FEATURE_CASES])
def test_features_match_reference(name: str, specs: list[tuple[int, int]], heads: int, kv_heads: int,
                                  head_dim: int, head_dim_v: int, block_size: int, features: dict,
                                  dtype: torch.dtype) -> None:
    batch = feature_batch(name, specs, heads, kv_heads, head_dim, head_dim_v, block_size, dtype)
    kwargs = feature_kwargs(features)
    out = run_torch(batch, **kwargs)
    assert out.shape == (*batch.query.shape[:2], head_dim_v) and out.dtype == dtype
    torch.testing.assert_close(out.double(), reference_attention(batch, **kwargs), atol=tolerance(dtype), rtol=0)


@pytest.mark.parametrize(("name", "specs", "heads", "kv_heads", "head_dim", "head_dim_v", "block_size", "features"),
                         [c for c in FEATURE_CASES if c[-1] and c[0] != "window_wider_than_context"],
                         ids=[c[0] for c in FEATURE_CASES if c[-1] and c[0] != "window_wider_than_context"])
def test_each_feature_changes_the_answer(name: str, specs: list[tuple[int, int]], heads: int, kv_heads: int,
                                         head_dim: int, head_dim_v: int, block_size: int, features: dict) -> None:
    """The reference checks above would prove nothing if the feature did not matter: switched off (the
    plain kernel), the output is far outside the tolerance."""
    batch = feature_batch(name, specs, heads, kv_heads, head_dim, head_dim_v, block_size, torch.float32)
    want = reference_attention(batch, **feature_kwargs(features))
    plain = run_torch(batch).double()
    assert (plain - want).abs().max() > 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("name", "specs", "heads", "kv_heads", "head_dim", "block_size"), CASES)
def test_paged_attention_matches_reference(
    name: str,
    specs: list[tuple[int, int]],
    heads: int,
    kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
) -> None:
    batch = make_batch(specs, heads, kv_heads, head_dim, block_size, dtype, seed=len(name))
    k_cache, v_cache = written_cache(batch, attention.write_kv)
    out = attention.paged_attention(
        batch.query,
        k_cache,
        v_cache,
        batch.cu_seqlens_q,
        batch.context_lens,
        batch.block_tables,
        batch.scale,
        batch.max_seqlen_q,
    )
    assert out.shape == batch.query.shape and out.dtype == dtype
    torch.testing.assert_close(out.double(), reference_attention(batch), atol=tolerance(dtype), rtol=0)


def test_padding_sequence_and_trailing_rows_are_zero() -> None:
    batch = make_batch([(10, 1), (-1, 1), (0, 3)], 4, 2, 16, 4)
    k_cache, v_cache = written_cache(batch, attention.write_kv)
    query = torch.cat([batch.query, torch.randn(2, *batch.query.shape[1:])])  # 2 rows past the last sequence
    out = attention.paged_attention(
        query, k_cache, v_cache, batch.cu_seqlens_q, batch.context_lens, batch.block_tables, batch.scale, 3
    )
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(out[-2:], torch.zeros_like(out[-2:]))
    assert out[[0, 2, 3, 4]].abs().sum(dim=(1, 2)).gt(0).all()


def test_write_kv_stores_only_valid_slots() -> None:
    batch = make_batch([(3, 2), (-1, 1), (0, 5)], 4, 2, 16, 4)
    assert (batch.slot_mapping < 0).sum() == 1
    k_cache, v_cache = written_cache(batch, attention.write_kv)
    want_k, want_v = reference_cache(batch)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


def test_write_kv_rejects_non_viewable_cache() -> None:
    batch = make_batch([(0, 2)], 4, 2, 16, 4)
    k_cache = batch.k_cache.transpose(0, 1)  # [block_size, num_blocks, Hkv, D]: not a flat slot view
    with pytest.raises(RuntimeError):
        attention.write_kv(batch.new_key, batch.new_value, k_cache, batch.v_cache, batch.slot_mapping)


def test_grouped_heads_use_their_own_kv_head() -> None:
    """Zeroing one KV head's values zeroes exactly the query heads of its group."""
    batch = make_batch([(5, 3), (9, 1)], 6, 3, 16, 4)
    k_cache, v_cache = written_cache(batch, attention.write_kv)
    v_cache[:, :, 1] = 0
    out = attention.paged_attention(
        batch.query,
        k_cache,
        v_cache,
        batch.cu_seqlens_q,
        batch.context_lens,
        batch.block_tables,
        batch.scale,
        batch.max_seqlen_q,
    )
    assert torch.equal(out[:, 2:4], torch.zeros_like(out[:, 2:4]))
    assert out[:, :2].abs().gt(0).all() and out[:, 4:].abs().gt(0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("specs", [[(9, 1)], [(5, 1), (17, 1), (0, 1), (12, 1)], [(7, 1), (7, 1)]],
                         ids=["one", "ragged", "equal"])
def test_decode_gather_matches_reference(specs: list[tuple[int, int]], dtype: torch.dtype) -> None:
    """A decode-only step's gather, made once for the step, gives the reference's answer for plain layers
    (lengths ragged or equal: the mask is always there); a windowed layer ignores it and still windows."""
    batch = make_batch(specs, 8, 2, 32, 4, dtype, seed=len(specs))
    k_cache, v_cache = written_cache(batch, attention.write_kv)
    slots, mask = attention.decode_gather(batch.context_lens.tolist(), batch.block_tables, 4)
    assert slots.shape == mask.shape[::3] == (len(specs), max(batch.context_lens.tolist()))
    args = (batch.query, k_cache, v_cache, batch.cu_seqlens_q, batch.context_lens, batch.block_tables,
            batch.scale, batch.max_seqlen_q)
    out = attention.paged_attention(*args, decode_slots=slots, decode_mask=mask)
    torch.testing.assert_close(out.double(), reference_attention(batch), atol=tolerance(dtype), rtol=0)
    windowed = attention.paged_attention(*args, sliding_window=4, decode_slots=slots, decode_mask=mask)
    torch.testing.assert_close(windowed.double(), reference_attention(batch, sliding_window=4),
                               atol=tolerance(dtype), rtol=0)
