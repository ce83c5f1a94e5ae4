"""Where one engine step's time goes on a GPU (a diagnosis aid for issue 3's targets).

For decode batches of 1, 64 and 256 sequences (context ~512) it reports, per step:
the graph replay's GPU time (CUDA events), the host time of each engine phase (schedule, prepare,
replay + sampling, postprocess), and the number of CUDA kernels one decode forward launches
(torch.profiler): the plain eager model's, and the captured forward's (compiled with
torch.compile unless `--no-compile`), which is what a replayed graph executes.

    python benchmarks/gpu_step_profile.py --model-path /tmp/llama1b [--no-compile] [--out step_profile.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from llmserve.config import WorkerConfig  # noqa: E402
from llmserve.engine.builder import build_engine  # noqa: E402
from llmserve.engine.request import SamplingParams  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, *args):
    _sync()
    started = time.perf_counter()
    out = fn(*args)
    _sync()
    return out, (time.perf_counter() - started) * 1000


def profile_batch(engine, batch: int, context: int, steps: int) -> dict:
    for i in range(batch):
        engine.add(10_000 * batch + i, [100 + (i + j) % 5000 for j in range(context)],
                   SamplingParams(max_tokens=steps + 50, temperature=0.0, ignore_eos=True))
    while any(s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running) or \
            engine.scheduler.waiting:
        engine.step()  # prefill
    phases = {"schedule": 0.0, "prepare": 0.0, "execute": 0.0, "sample": 0.0, "postprocess": 0.0}
    for _ in range(steps):
        scheduled, ms = _timed(engine.scheduler.schedule)
        phases["schedule"] += ms
        _, ms = _timed(engine.runner.prepare, scheduled)
        phases["prepare"] += ms
        launched, ms = _timed(engine._launch, scheduled, None)  # prepare again + replay, tokens' read-back queued
        phases["execute"] += ms
        result, ms = _timed(engine._result, launched)
        phases["sample"] += ms
        _, ms = _timed(engine._postprocess, scheduled, launched.sampling, result)
        phases["postprocess"] += ms
    replay_ms = None
    graphs = engine.runner.graphs
    if graphs is not None:
        batch_obj = engine.runner.prepare(engine.scheduler.schedule())
        bucket = next(b for b in graphs.batch_buckets if b >= batch)
        graphs._fill(batch_obj, bucket, bucket)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            graphs._replay(bucket, bucket, 1)
        end.record()
        torch.cuda.synchronize()
        replay_ms = start.elapsed_time(end) / 20
    for seq_id in list(engine._tracked):
        engine.abort(seq_id)
    return {"batch": batch, "context": context, "replay_gpu_ms": replay_ms,
            **{f"{k}_ms": v / steps for k, v in phases.items()}}


def count_kernels(engine) -> dict[str, Any]:
    """CUDA kernels of one decode forward of one sequence: eager model, and the graphs' forward."""
    engine.add(1, list(range(100, 164)), SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    engine.step()
    batch = engine.runner.prepare(engine.scheduler.schedule())
    counts: dict[str, Any] = {"eager": _kernels(lambda: engine.runner.forward(batch))[0], "graph": None}
    graphs = engine.runner.graphs
    if graphs is not None:
        graphs._fill(batch, 1, 1)
        counts["graph"], counts["graph_top_kernels"] = _kernels(lambda: graphs._forward(1, 1, 1))
    engine.abort(1)
    return counts


@torch.inference_mode()
def _kernels(fn) -> tuple[int, list[dict]]:
    """Kernels one call launches, and the 12 costliest kernel names (count, total GPU us)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    totals: dict[str, list[float]] = {}
    for e in kernels:
        entry = totals.setdefault(e.name[:90], [0, 0.0])
        entry[0] += 1
        entry[1] += e.time_range.elapsed_us()
    top = sorted(totals.items(), key=lambda kv: -kv[1][1])[:12]
    return len(kernels), [{"kernel": k, "count": c, "total_us": round(t, 1)} for k, (c, t) in top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cpu only smoke-tests this script")
    parser.add_argument("--no-compile", action="store_true", help="capture the eager forward")
    args = parser.parse_args()
    on_cuda = args.device.startswith("cuda")
    started = time.perf_counter()
    engine = build_engine(WorkerConfig(model_path=args.model_path, device=args.device,
                                       dtype="bfloat16" if on_cuda else "float32", kv_cache_tokens=300_000,
                                       max_num_seqs=256, max_model_len=2048, max_num_batched_tokens=8192,
                                       compile=not args.no_compile), 0)
    engine.async_scheduling = False  # phases are timed one after another, each step read back
    graphs = engine.runner.graphs
    forward = graphs.forward_fn if graphs is not None else None
    results = {"device": torch.cuda.get_device_name(0) if on_cuda else "cpu",
               "compiled": bool(getattr(forward, "is_compiled", False)),
               "build_s": time.perf_counter() - started,  # load, compile, capture
               "kernels_per_decode_forward": count_kernels(engine) if on_cuda else None,
               "batches": [profile_batch(engine, b, 512, args.steps) for b in (1, 64, 256)]}
    kernels = results["kernels_per_decode_forward"] or {}
    print(f"{results['device']}: compiled={results['compiled']}, kernels per decode forward: eager "
          f"{kernels.get('eager')}, graph {kernels.get('graph')}")
    for row in kernels.get("graph_top_kernels", []):
        print(f"  {row['total_us']:8.1f} us {row['count']:4d} x {row['kernel']}")
    for row in results["batches"]:
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
