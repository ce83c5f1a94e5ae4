"""Cases for the Triton kernels, against the same float64 reference as the torch path.

Not collected by pytest directly (the file name has no `test_` prefix): `test_triton_attention.py`
runs it in a child pytest, natively on CUDA or under Triton's interpreter on CPU tensors
(`TRITON_INTERPRET=1` must be set before triton is first imported, which this process cannot
guarantee). The interpreter cannot do bfloat16 `tl.dot` (triton-lang/triton#11584), so bfloat16
runs only on CUDA; `benchmarks/gpu_attention_check.py` covers it on realistic shapes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from llmserve.engine import hf_attention, triton_attention

ON_CUDA = torch.cuda.is_available()


def _load_sibling(name: str) -> ModuleType:
    """The shared batch builder and reference, loaded from ``test_attention.py`` beside this file."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


shared = _load_sibling("test_attention")
DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_CUDA else [])


def _run(batch: Any, **options: Any) -> torch.Tensor:  # [T, H, Dv] on the CPU
    """Write the batch's tokens with the Triton ``write_kv``, then attend into a NaN-poisoned output."""
    k_cache, v_cache = batch.k_cache.to(DEVICE), batch.v_cache.to(DEVICE)
    triton_attention.write_kv(
        batch.new_key.to(DEVICE), batch.new_value.to(DEVICE), k_cache, v_cache, batch.slot_mapping.to(DEVICE)
    )
    want_k, want_v = shared.reference_cache(batch)
    assert torch.equal(k_cache.cpu(), want_k) and torch.equal(v_cache.cpu(), want_v)
    out = torch.full((*batch.query.shape[:2], v_cache.shape[-1]), float("nan"), dtype=batch.query.dtype,
                     device=DEVICE)
    result = triton_attention.paged_attention(*_attention_args(batch, k_cache, v_cache), out=out, **options)
    assert result is out
    return out.cpu()


def _attention_args(
    batch: Any, k_cache: torch.Tensor, v_cache: torch.Tensor, query: Any = None
) -> tuple[Any, ...]:
    """The positional arguments of ``paged_attention`` for ``batch``, on ``DEVICE``."""
    return (
        (batch.query if query is None else query).to(DEVICE),
        k_cache,
        v_cache,
        batch.cu_seqlens_q.to(DEVICE),
        batch.context_lens.to(DEVICE),
        batch.block_tables.to(DEVICE),
        batch.scale,
        batch.max_seqlen_q,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("name", "specs", "heads", "kv_heads", "head_dim", "block_size"),
    shared.CASES,
    ids=[c[0] for c in shared.CASES],
)
def test_kernels_match_reference(
    name: str,
    specs: list[tuple[int, int]],
    heads: int,
    kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
) -> None:
    """Default tiles; in float32 also small tiles (many per sequence, causal edges inside), split or not."""
    batch = shared.make_batch(specs, heads, kv_heads, head_dim, block_size, dtype, seed=len(name))
    want = shared.reference_attention(batch)
    small_tiles = [{"block_m": 16, "block_n": 16}, {"block_m": 16, "block_n": 16, "num_splits": 3}]
    for options in [{}] + (small_tiles if dtype == torch.float32 else []):
        out = _run(batch, **options)
        assert not out.isnan().any(), f"unwritten output with {options}"
        torch.testing.assert_close(out.double(), want, atol=shared.tolerance(dtype), rtol=0, msg=str(options))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("name", "specs", "heads", "kv_heads", "head_dim", "head_dim_v", "block_size", "features"),
    shared.FEATURE_CASES,
    ids=[c[0] for c in shared.FEATURE_CASES],
)
def test_features_match_reference(
    name: str, specs: list[tuple[int, int]], heads: int, kv_heads: int, head_dim: int, head_dim_v: int,
    block_size: int, features: dict, dtype: torch.dtype,
) -> None:
    """Windows, soft-caps, sinks, ALiBi and a value head dim of their own: default tiles, and in float32
    small tiles (window edges inside tiles), split decodes (sinks merged across splits) and unsplit."""
    batch = shared.feature_batch(name, specs, heads, kv_heads, head_dim, head_dim_v, block_size, dtype)
    want = shared.reference_attention(batch, **shared.feature_kwargs(features))
    small_tiles = [{"block_m": 16, "block_n": 16}, {"block_m": 16, "block_n": 16, "num_splits": 3},
                   {"num_splits": 2}]
    for options in [{}] + (small_tiles if dtype == torch.float32 else []):
        out = _run(batch, **shared.feature_kwargs(features, DEVICE), **options)
        assert not out.isnan().any(), f"unwritten output with {options}"
        torch.testing.assert_close(out.double(), want, atol=shared.tolerance(dtype), rtol=0, msg=str(options))


def test_plain_kernel_misses_the_features() -> None:
    """The same cases through the kernel with the features off are far from the reference."""
    for name, specs, heads, kv_heads, head_dim, head_dim_v, block_size, features in shared.FEATURE_CASES:
        if not features or name == "window_wider_than_context":
            continue
        batch = shared.feature_batch(name, specs, heads, kv_heads, head_dim, head_dim_v, block_size, torch.float32)
        want = shared.reference_attention(batch, **shared.feature_kwargs(features))
        assert (_run(batch).double() - want).abs().max() > 0.05, name


def test_windowed_long_decode_splits_start_at_the_window() -> None:
    """A window far behind a long context: the splits cover the window only, and still add up."""
    batch = shared.make_batch([(300, 1), (5, 1), (130, 1)], 4, 2, 16, 16)
    want = shared.reference_attention(batch, sliding_window=24)
    for splits in (None, 1, 4):
        out = _run(batch, sliding_window=24, num_splits=splits, block_n=16)
        torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=0, msg=str(splits))


@pytest.mark.parametrize("num_splits", [1, 2, 5])
def test_decode_splits(num_splits: int) -> None:
    """Decode batches split over more programs than some sequences need (those write directly)."""
    batch = shared.make_batch([(40, 1), (3, 1), (0, 1), (-1, 1), (63, 1)], 8, 2, 32, 16)
    out = _run(batch, num_splits=num_splits, block_n=16)
    assert not out.isnan().any()
    torch.testing.assert_close(out.double(), shared.reference_attention(batch), atol=1e-5, rtol=0)
    assert torch.equal(out[3], torch.zeros_like(out[3]))  # the padding sequence


def test_non_contiguous_query_and_output() -> None:
    """Query in the [H, T, D]-transposed layout transformers hands over; output the same."""
    batch = shared.make_batch([(5, 3), (9, 1)], 4, 2, 16, 4)
    query = (
        batch.query.to(DEVICE).transpose(0, 1).contiguous().transpose(0, 1)
    )  # [T, H, D], strides (D, T*D, 1)
    k_cache, v_cache = batch.k_cache.to(DEVICE), batch.v_cache.to(DEVICE)
    key = batch.new_key.to(DEVICE).transpose(0, 1).contiguous().transpose(0, 1)  # [T, Hkv, D], same layout
    triton_attention.write_kv(
        key, batch.new_value.to(DEVICE), k_cache, v_cache, batch.slot_mapping.to(DEVICE)
    )
    out = torch.full_like(query, float("nan")).transpose(0, 1).contiguous().transpose(0, 1)
    triton_attention.paged_attention(*_attention_args(batch, k_cache, v_cache, query), out=out)
    torch.testing.assert_close(out.cpu().double(), shared.reference_attention(batch), atol=1e-5, rtol=0)


def test_custom_ops_run_the_kernels_under_compile() -> None:
    """hf_attention's ops with use_triton: one compiled graph (aot_eager) around the Triton kernels."""
    batch = shared.make_batch([(5, 3), (9, 1), (0, 4)], 4, 2, 16, 4)
    kv_cache = torch.stack([batch.k_cache, batch.v_cache]).to(DEVICE)  # [2, num_blocks, block_size, Hkv, D]

    def step(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv: torch.Tensor,
             slots: torch.Tensor, cu: torch.Tensor, lens: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        hf_attention.write_kv(key, value, kv, slots, True)
        return hf_attention.paged_attention(query, kv, cu, lens, tables, batch.scale, batch.max_seqlen_q, True)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    inputs = (batch.query, batch.new_key, batch.new_value)
    indices = (batch.slot_mapping, batch.cu_seqlens_q, batch.context_lens, batch.block_tables)
    out = compiled(*(x.to(DEVICE) for x in inputs), kv_cache, *(x.to(DEVICE) for x in indices))
    want_k, want_v = shared.reference_cache(batch)
    assert torch.equal(kv_cache[0].cpu(), want_k) and torch.equal(kv_cache[1].cpu(), want_v)
    torch.testing.assert_close(out.cpu().double(), shared.reference_attention(batch), atol=1e-5, rtol=0)


def test_custom_ops_pass_features_and_mla_layers_under_compile() -> None:
    """A windowed, soft-capped, sink-and-ALiBi layer whose values have their own head dim, stored as
    KVCache lays it out ([num_blocks, block_size, Hkv, Dk + Dv]): one compiled graph, the reference's answer."""
    name, specs, heads, kv_heads, head_dim, head_dim_v, block_size, features = shared.FEATURE_CASES[-1]
    batch = shared.feature_batch(name, specs, heads, kv_heads, head_dim, head_dim_v, block_size, torch.float32)
    kv_cache = torch.cat([batch.k_cache, batch.v_cache], dim=-1).to(DEVICE)  # [num_blocks, block_size, Hkv, Dk + Dv]
    kwargs = shared.feature_kwargs(features, DEVICE)

    def step(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv: torch.Tensor,
             slots: torch.Tensor, cu: torch.Tensor, lens: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        hf_attention.write_kv(key, value, kv, slots, True)
        return hf_attention.paged_attention(query, kv, cu, lens, tables, batch.scale, batch.max_seqlen_q, True,
                                            kwargs["sliding_window"], kwargs["softcap"], kwargs["sinks"],
                                            kwargs["alibi_slopes"])

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    inputs = (batch.query, batch.new_key, batch.new_value)
    indices = (batch.slot_mapping, batch.cu_seqlens_q, batch.context_lens, batch.block_tables)
    out = compiled(*(x.to(DEVICE) for x in inputs), kv_cache, *(x.to(DEVICE) for x in indices))
    want_k, want_v = shared.reference_cache(batch)
    assert torch.equal(kv_cache[..., :head_dim].cpu(), want_k) and torch.equal(kv_cache[..., head_dim:].cpu(), want_v)
    torch.testing.assert_close(out.cpu().double(), shared.reference_attention(batch, **shared.feature_kwargs(features)),
                               atol=1e-5, rtol=0)


def test_rejects_mismatched_dtypes() -> None:
    batch = shared.make_batch([(2, 1)], 4, 2, 16, 4)
    with pytest.raises(ValueError, match="dtype"):
        triton_attention.paged_attention(
            *_attention_args(batch, batch.k_cache, batch.v_cache, batch.query.half())
        )


@pytest.mark.skipif(not ON_CUDA, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("num_splits", [None, 3])
def test_decode_step_replays_in_cuda_graph(num_splits: int | None) -> None:
    """write_kv + attention captured once, then replayed over another step's lengths, tables and
    cache contents copied into the same buffers (same shapes: 7 blocks in use, at most 4 a sequence)."""
    steps = [
        shared.make_batch([(30, 1), (5, 1), (50, 1)], 8, 2, 64, 16, torch.bfloat16, seed=1),
        shared.make_batch([(60, 1), (0, 1), (20, 1)], 8, 2, 64, 16, torch.bfloat16, seed=2),
    ]
    names = ["query", "new_key", "new_value", "slot_mapping", "k_cache", "v_cache"]
    names += ["cu_seqlens_q", "context_lens", "block_tables"]
    static = {name: getattr(steps[0], name).to(DEVICE) for name in names}
    out = torch.full_like(static["query"], float("nan"))

    def step() -> None:
        triton_attention.write_kv(
            static["new_key"],
            static["new_value"],
            static["k_cache"],
            static["v_cache"],
            static["slot_mapping"],
        )
        triton_attention.paged_attention(
            static["query"], static["k_cache"], static["v_cache"], static["cu_seqlens_q"],
            static["context_lens"], static["block_tables"], steps[0].scale, 1, out=out, num_splits=num_splits,
        )  # fmt: skip

    step()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for batch in steps:
        for name in names:
            static[name].copy_(getattr(batch, name))
        out.fill_(float("nan"))
        graph.replay()
        torch.testing.assert_close(out.cpu().double(), shared.reference_attention(batch), atol=2e-2, rtol=0)
