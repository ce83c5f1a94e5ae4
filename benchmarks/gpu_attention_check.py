"""Check the Triton paged-attention kernels against the torch path on a CUDA GPU, then time them.

Shapes are Llama-3.2-1B's (32 query heads, 8 KV heads, head_dim 64) with 16-token blocks. Errors are
measured against the torch path run in float32 on the same (upcast) data: max |out - ref| and
||out - ref|| / ||ref||. Timings are medians of ``triton.testing.do_bench``; decode is also timed as a
replayed CUDA graph (write_kv + attention), which is how the engine runs it. Exits 1 if a check fails.

    python benchmarks/gpu_attention_check.py [--quick]    # writes $OUT/attention.json when OUT is set
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402
import triton.testing  # noqa: E402

from llmserve.engine import attention, triton_attention  # noqa: E402

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 64, 16
MAX_REL_ERR = {torch.bfloat16: 2e-2, torch.float32: 1e-4}
SWEEP_SHAPES = [(1, 512), (1, 2048), (1, 8192), (8, 512), (8, 2048), (32, 1024), (64, 2048), (256, 512)]


@dataclass(frozen=True)
class Inputs:
    """One step's tensors on the GPU; the new tokens are already in the caches."""

    query: torch.Tensor  # [T, H, D]
    k_cache: torch.Tensor  # [num_blocks, BLOCK_SIZE, Hkv, D]
    v_cache: torch.Tensor  # [num_blocks, BLOCK_SIZE, Hkv, D]
    new_key: torch.Tensor  # [T, Hkv, D]
    new_value: torch.Tensor  # [T, Hkv, D]
    slot_mapping: torch.Tensor  # [T] int64
    cu_seqlens_q: torch.Tensor  # [B + 1] int32
    context_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32
    max_seqlen_q: int

    @property
    def kv_bytes(self) -> int:
        """Bytes of K and V the kernels must read: each sequence's live positions, once."""
        per_position = 2 * NUM_KV_HEADS * HEAD_DIM * self.k_cache.element_size()
        return int(self.context_lens.sum()) * per_position


def make_inputs(specs: list[tuple[int, int]], dtype: torch.dtype, seed: int = 0) -> Inputs:
    """``specs``: (num_cached, num_new) per sequence; blocks are a random permutation of the pool."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    lens = [cached + new for cached, new in specs]
    counts = [-(-n // BLOCK_SIZE) for n in lens]
    num_blocks = sum(counts) + 8
    perm = torch.randperm(num_blocks, generator=gen, device="cuda").to(torch.int32)
    tables = torch.zeros(len(specs), max(counts), dtype=torch.int32, device="cuda")
    starts = [0, *torch.tensor(counts).cumsum(0).tolist()]
    for seq, count in enumerate(counts):
        tables[seq, :count] = perm[starts[seq] : starts[seq] + count]
    positions = torch.cat([torch.arange(c, c + n) for c, n in specs]).cuda()
    owner = torch.cat([torch.full((n,), s) for s, (_, n) in enumerate(specs)]).cuda()
    slots = tables[owner, positions // BLOCK_SIZE].long() * BLOCK_SIZE + positions % BLOCK_SIZE
    qlens = [n for _, n in specs]
    cache_shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device="cuda").to(dtype)

    inputs = Inputs(
        query=randn(len(slots), NUM_HEADS, HEAD_DIM),
        k_cache=randn(*cache_shape),
        v_cache=randn(*cache_shape),
        new_key=randn(len(slots), NUM_KV_HEADS, HEAD_DIM),
        new_value=randn(len(slots), NUM_KV_HEADS, HEAD_DIM),
        slot_mapping=slots,
        cu_seqlens_q=torch.tensor(
            [0, *torch.tensor(qlens).cumsum(0).tolist()], dtype=torch.int32, device="cuda"
        ),
        context_lens=torch.tensor(lens, dtype=torch.int32, device="cuda"),
        block_tables=tables,
        max_seqlen_q=max(qlens),
    )
    triton_attention.write_kv(inputs.new_key, inputs.new_value, inputs.k_cache, inputs.v_cache, slots)
    return inputs


def run_triton(x: Inputs, out: torch.Tensor | None = None, **options: Any) -> torch.Tensor:  # [T, H, D]
    return triton_attention.paged_attention(
        x.query,
        x.k_cache,
        x.v_cache,
        x.cu_seqlens_q,
        x.context_lens,
        x.block_tables,
        HEAD_DIM**-0.5,
        x.max_seqlen_q,
        out=out,
        **options,
    )


def run_torch(x: Inputs, dtype: torch.dtype | None = None) -> torch.Tensor:  # [T, H, D]
    cast = (lambda t: t.to(dtype)) if dtype else (lambda t: t)
    return attention.paged_attention(
        cast(x.query),
        cast(x.k_cache),
        cast(x.v_cache),
        x.cu_seqlens_q,
        x.context_lens,
        x.block_tables,
        HEAD_DIM**-0.5,
        x.max_seqlen_q,
    )


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:  # [T, H, D] each
    diff = (out.float() - ref.float()).nan_to_num(nan=float("inf"))
    return {"max_abs_err": diff.abs().max().item(), "rel_err": (diff.norm() / ref.float().norm()).item()}


def workloads(quick: bool) -> list[tuple[str, list[tuple[int, int]]]]:
    """(name, specs): decode grids over batch x context, prefills, chunked prefill, a mixed step."""
    gen = torch.Generator().manual_seed(1)
    cases = []
    for batch in [1, 8, 64, 256] if not quick else [1, 64]:
        for ctx in [64, 512, 2048] if not quick else [512]:
            lens = torch.randint(ctx // 2, ctx + 1, (batch,), generator=gen).tolist()
            lens[0] = ctx
            cases.append((f"decode b={batch} ctx={ctx}", [(n - 1, 1) for n in lens]))
    cases += [
        ("prefill b=1 len=2048", [(0, 2048)]),
        ("prefill b=4 len=512", [(0, 512)] * 4),
        ("chunked prefill b=2 prefix=1024 chunk=512", [(1024, 512), (1500, 512)]),
        (
            "mixed 4x256 chunks + 60 decodes",
            [(300 * i, 256) for i in range(4)] + [(700 + 9 * i, 1) for i in range(60)],
        ),
    ]
    return cases


def check(name: str, x: Inputs, dtype: torch.dtype) -> dict[str, Any]:
    """Triton (auto, no and 7 splits) against the float32 torch path; every output element written."""
    ref = run_torch(x, torch.float32)
    record: dict[str, Any] = {"workload": name, "dtype": str(dtype).removeprefix("torch.")}
    for label, options in [("auto", {}), ("no_split", {"num_splits": 1}), ("split_7", {"num_splits": 7})]:
        out = torch.full_like(x.query, float("nan"))
        run_triton(x, out=out, **options)
        record[label] = errors(out, ref)
    record["torch_path"] = errors(run_torch(x), ref)
    record["passed"] = all(record[k]["rel_err"] < MAX_REL_ERR[dtype] for k in ("auto", "no_split", "split_7"))
    return record


def bench_ms(fn: Any) -> float:
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def capture(fn: Callable[[], object]) -> torch.cuda.CUDAGraph:
    """``fn`` captured in a CUDA graph, after warm-up runs (compilation) on a side stream."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_ms(x: Inputs) -> tuple[float, bool]:
    """A decode step's write_kv + attention captured in one CUDA graph: replay time, replay == eager."""
    out = torch.empty_like(x.query)

    def step() -> None:
        triton_attention.write_kv(x.new_key, x.new_value, x.k_cache, x.v_cache, x.slot_mapping)
        run_triton(x, out=out)

    graph = capture(step)
    eager = run_triton(x).clone()
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    return bench_ms(graph.replay), bool(torch.equal(out, eager))


def time_workload(name: str, x: Inputs) -> dict[str, Any]:
    record: dict[str, Any] = {"workload": name, "kv_mb": x.kv_bytes / 1e6}
    out = torch.empty_like(x.query)
    record["triton_ms"] = bench_ms(lambda: run_triton(x, out=out))
    record["triton_no_split_ms"] = bench_ms(lambda: run_triton(x, out=out, num_splits=1))
    record["torch_path_ms"] = bench_ms(lambda: run_torch(x))
    record["write_kv_ms"] = bench_ms(
        lambda: triton_attention.write_kv(x.new_key, x.new_value, x.k_cache, x.v_cache, x.slot_mapping)
    )
    record["kv_gb_per_s"] = x.kv_bytes / record["triton_ms"] / 1e6
    if x.max_seqlen_q == 1:  # eager decode times are mostly launch overhead; the graph shows the GPU's
        record["graph_step_ms"], record["graph_matches_eager"] = graph_ms(x)
        record["graph_kv_gb_per_s"] = x.kv_bytes / record["graph_step_ms"] / 1e6
    return record


def sweep_shape(batch: int, ctx: int) -> dict[str, Any]:
    """Every (splits, block_n, num_warps) for one decode shape, timed as a replayed CUDA graph."""
    x = make_inputs([(ctx - 1, 1)] * batch, torch.bfloat16)
    out = torch.empty_like(x.query)
    results = []
    for splits in [1, 2, 4, 8, 16, 32, 64] if batch < 64 else [1, 2, 4]:
        for block_n, warps in [(32, 2), (64, 2), (64, 4), (128, 4), (128, 8)]:
            options = {"num_splits": splits, "block_n": block_n, "num_warps": warps}
            graph = capture(lambda options=options: run_triton(x, out=out, **options))
            results.append({**options, "graph_ms": bench_ms(graph.replay)})
    default_ms = bench_ms(capture(lambda: run_triton(x, out=out)).replay)
    return {"batch": batch, "ctx": ctx, "default_graph_ms": default_ms, "results": results}


def sweep(report: dict[str, Any]) -> None:
    """Decode launch configurations against the defaults, attention call alone."""
    report["sweep"] = []
    for batch, ctx in SWEEP_SHAPES:
        record = sweep_shape(batch, ctx)
        report["sweep"].append(record)
        print(f"sweep b={batch} ctx={ctx}: default {record['default_graph_ms'] * 1e3:.1f} us; best:")
        for result in sorted(record["results"], key=lambda r: r["graph_ms"])[:3]:
            print(f"    {result}")
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few shapes only")
    parser.add_argument("--sweep", action="store_true", help="only time decode launch configurations")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    report: dict[str, Any] = {
        "device": props.name,
        "num_sms": props.multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "checks": [],
        "timings": [],
    }
    if args.sweep:
        sweep(report)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "attention_sweep.json").write_text(json.dumps(report, indent=2))
        return 0
    for dtype in (torch.bfloat16, torch.float32):
        for i, (name, specs) in enumerate(workloads(args.quick)):
            x = make_inputs(specs, dtype, seed=i)
            record = check(name, x, dtype)
            report["checks"].append(record)
            print(
                f"check {record['dtype']:8} {name:42} auto rel {record['auto']['rel_err']:.2e} "
                f"max {record['auto']['max_abs_err']:.2e} | no-split {record['no_split']['rel_err']:.2e} "
                f"7-split {record['split_7']['rel_err']:.2e} | "
                f"torch rel {record['torch_path']['rel_err']:.2e} {'ok' if record['passed'] else 'FAIL'}",
                flush=True,
            )
            if dtype == torch.bfloat16:
                timing = time_workload(name, x)
                report["timings"].append(timing)
                print(
                    f"time  {name:42} triton {timing['triton_ms']:.4f} ms (no split {timing['triton_no_split_ms']:.4f}) "
                    f"graph {timing.get('graph_step_ms', float('nan')):.4f} ms  torch {timing['torch_path_ms']:.3f} ms  "
                    f"write_kv {timing['write_kv_ms']:.4f} ms  {timing.get('graph_kv_gb_per_s', timing['kv_gb_per_s']):.0f} GB/s",
                    flush=True,
                )
            del x
            torch.cuda.empty_cache()
    failed = [c["workload"] + " " + c["dtype"] for c in report["checks"] if not c["passed"]]
    failed += [t["workload"] + " graph" for t in report["timings"] if t.get("graph_matches_eager") is False]
    report["failed"] = failed
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "attention.json").write_text(json.dumps(report, indent=2))
    print("FAILED: " + ", ".join(failed) if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
