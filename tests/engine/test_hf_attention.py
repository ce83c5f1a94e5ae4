"""The attention custom ops: the same results as the kernels they wrap, registrations torch's checker
accepts, and a module that can be imported again."""

from __future__ import annotations

import subprocess
import sys

import torch

from llmserve.engine import attention as torch_attention
from llmserve.engine import hf_attention

NUM_BLOCKS, BLOCK_SIZE, NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 12, 4, 4, 2, 8


def _step(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three sequences (a decode after 5 cached tokens, a 3-token chunk after 2, a padding one) and a
    padding token (slot -1, past the last sequence's rows)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "query": torch.randn(5, NUM_HEADS, HEAD_DIM, generator=gen),  # [T, H, D]
        "key": torch.randn(5, NUM_KV_HEADS, HEAD_DIM, generator=gen),  # [T, Hkv, D]
        "value": torch.randn(5, NUM_KV_HEADS, HEAD_DIM, generator=gen),  # [T, Hkv, D]
        "kv_cache": torch.randn(2, NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, generator=gen),
        "slot_mapping": torch.tensor([3 * BLOCK_SIZE + 1, 5 * BLOCK_SIZE + 2, 5 * BLOCK_SIZE + 3, 7 * BLOCK_SIZE, -1]),
        "cu_seqlens_q": torch.tensor([0, 1, 4, 4], dtype=torch.int32),
        "context_lens": torch.tensor([6, 5, 0], dtype=torch.int32),
        "block_tables": torch.tensor([[0, 3], [5, 7], [0, 0]], dtype=torch.int32),
    }


def _attention_args(step: dict[str, torch.Tensor]) -> tuple[object, ...]:
    return (step["query"], step["kv_cache"], step["cu_seqlens_q"], step["context_lens"], step["block_tables"],
            HEAD_DIM**-0.5, 3, False)


def test_ops_give_the_torch_kernels_results() -> None:
    step, want = _step(), _step()
    torch.ops.llmserve.write_kv(step["key"], step["value"], step["kv_cache"], step["slot_mapping"], False)
    got = torch.ops.llmserve.paged_attention(*_attention_args(step))
    k_cache, v_cache = want["kv_cache"]
    torch_attention.write_kv(want["key"], want["value"], k_cache, v_cache, want["slot_mapping"])
    expected = torch_attention.paged_attention(
        want["query"], k_cache, v_cache, want["cu_seqlens_q"], want["context_lens"], want["block_tables"],
        HEAD_DIM**-0.5, 3,
    )
    assert torch.equal(step["kv_cache"], want["kv_cache"])
    assert torch.equal(got, expected)


def test_ops_pass_torch_opcheck() -> None:
    """Schemas, declared mutations and fake kernels agree with what the ops do (incl. under AOT tracing)."""
    step = _step()
    torch.library.opcheck(hf_attention.write_kv,
                          (step["key"], step["value"], step["kv_cache"], step["slot_mapping"], False))
    torch.library.opcheck(hf_attention.paged_attention, _attention_args(step))


def test_module_imports_again() -> None:
    code = ("import importlib, torch; import llmserve.engine.hf_attention as m; importlib.reload(m); "
            "assert hasattr(torch.ops.llmserve, 'paged_attention')")
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def _mla_step(seed: int = 0) -> dict[str, torch.Tensor]:
    """`_step` with values of their own head dim (6), stored beside the keys in one layer tensor
    [num_blocks, block_size, Hkv, Dk + Dv] as `KVCache` lays out such a layer."""
    step = _step(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    step["value"] = torch.randn(5, NUM_KV_HEADS, 6, generator=gen)
    step["kv_cache"] = torch.randn(NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM + 6, generator=gen)
    return step


FEATURES = {"sliding_window": 3, "softcap": 2.0, "sinks": torch.tensor([0.5, -1.0, 2.0, 0.0]),
            "alibi_slopes": torch.tensor([0.5, 0.25, 0.125, 0.0625])}


def test_ops_pass_the_features_and_value_head_dim_to_the_kernels() -> None:
    """Window, soft-cap, sinks and ALiBi through the op reach the kernel; an MLA-shaped layer tensor is
    split into keys and values of their own head dims."""
    for make in (_step, _mla_step):
        step, want = make(), make()
        torch.ops.llmserve.write_kv(step["key"], step["value"], step["kv_cache"], step["slot_mapping"], False)
        got = torch.ops.llmserve.paged_attention(*_attention_args(step), *FEATURES.values())
        k_cache, v_cache = hf_attention.split_kv(want["kv_cache"], HEAD_DIM)
        torch_attention.write_kv(want["key"], want["value"], k_cache, v_cache, want["slot_mapping"])
        expected = torch_attention.paged_attention(
            want["query"], k_cache, v_cache, want["cu_seqlens_q"], want["context_lens"], want["block_tables"],
            HEAD_DIM**-0.5, 3, **FEATURES,
        )
        plain = torch_attention.paged_attention(
            want["query"], k_cache, v_cache, want["cu_seqlens_q"], want["context_lens"], want["block_tables"],
            HEAD_DIM**-0.5, 3,
        )
        assert torch.equal(step["kv_cache"], want["kv_cache"])
        assert got.shape == (5, NUM_HEADS, step["value"].shape[-1])
        assert torch.equal(got, expected) and not torch.allclose(got, plain, atol=1e-2)


def test_ops_with_features_pass_torch_opcheck() -> None:
    for make in (_step, _mla_step):
        step = make()
        torch.library.opcheck(hf_attention.write_kv,
                              (step["key"], step["value"], step["kv_cache"], step["slot_mapping"], False))
        torch.library.opcheck(hf_attention.paged_attention, (*_attention_args(step), *FEATURES.values()))
