"""Where one engine step's host time goes on the CPU, phase by phase (issue 18).

Builds the engine a CPU worker would (`build_engine`, float32), fills a decode batch of B greedy
sequences (64-token prompts, prefilled first) and times each phase of `B` decode steps one after
another: schedule, prepare (input packing), forward (the model, attention metadata tensors
included), sample (the host side of drawing the tokens: argmax and read-back), postprocess
(append, stop checks, detokenisation, events). Then the rest of a token's path on the event loop:
routing the step's events to their streams (`Worker._route`) and framing each as an SSE chunk
(`ChunkFormat.text`), timed on the same outputs.

Times are this thread's CPU time by default (`--clock cpu`; run with OMP_NUM_THREADS=1 so the
model's kernels run on it too): on a shared, oversubscribed machine the wall clock mostly measures
the other tenants, the CPU time what the step costs. `--clock wall` for the wall clock.

    python benchmarks/cpu_step_profile.py --model-path /tmp/tiny --batches 1 16 32 --out profile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from llmserve.api.streaming import ChunkFormat  # noqa: E402
from llmserve.config import WorkerConfig  # noqa: E402
from llmserve.engine.builder import build_engine  # noqa: E402
from llmserve.engine.cuda_graphs import StepLogits  # noqa: E402
from llmserve.engine.request import SamplingParams  # noqa: E402
from llmserve.engine.sampler import read_sample  # noqa: E402
from llmserve.request_stream import RequestStream  # noqa: E402
from llmserve.worker import Worker  # noqa: E402

PHASES = ("schedule", "prepare", "forward", "sample", "postprocess", "route", "sse")


_CLOCKS: dict[str, Callable[[], int]] = {"cpu": time.thread_time_ns, "wall": time.perf_counter_ns}


def _timed(clock: Callable[[], int], fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    started = clock()
    out = fn(*args)
    return out, (clock() - started) / 1e3


def profile_batch(engine: Any, batch: int, prompt_len: int, steps: int, seq_base: int,
                  clock: Callable[[], int] = time.thread_time_ns) -> dict[str, Any]:
    """Median microseconds per decode step of each phase, over `steps` steps of `batch` sequences."""
    worker = Worker.__new__(Worker)  # only its routing: streams by sequence id, no metrics
    worker._streams, worker._series, worker.num_finished = {}, None, 0
    worker.config = None  # type: ignore[assignment]
    fmt = ChunkFormat("chatcmpl-x", "chat.completion.chunk", "tiny", False, "delta.content")
    for i in range(batch):
        seq_id = seq_base + i
        engine.add(seq_id, [100 + (7 * i + j) % 3000 for j in range(prompt_len)],
                   SamplingParams(max_tokens=steps + 512, temperature=0.0, ignore_eos=True))  # none finishes
        worker._streams[seq_id] = RequestStream([seq_id])
    while engine.scheduler.waiting or any(s.num_computed_tokens < s.num_prompt_tokens
                                          for s in engine.scheduler.running):
        engine.step()  # prefill (and the first token)
    samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for _ in range(steps):
        scheduled, us = _timed(clock, engine.scheduler.schedule)
        samples["schedule"].append(us)
        batch_obj, us = _timed(clock, engine.runner.prepare, scheduled)
        samples["prepare"].append(us)
        # What `_launch` does after packing: the forward (metadata tensors made inside), argmax.
        logits, us = _timed(clock, engine.runner.forward, batch_obj)
        samples["forward"].append(us)
        sampling = [item.seq for item in scheduled if item.samples]
        started = clock()
        drawn = engine._draw_on_device(StepLogits(logits), sampling, None, None)
        readback = engine.runner.start_readback(drawn.for_host)
        result = read_sample(drawn, readback.wait())
        samples["sample"].append((clock() - started) / 1e3)
        engine._advance(scheduled)
        outputs, us = _timed(clock, engine._postprocess, scheduled, sampling, result)
        samples["postprocess"].append(us)
        _, us = _timed(clock, worker._route, outputs)
        samples["route"].append(us)
        started = clock()
        for out in outputs:
            fmt.text(0, out.text)
        samples["sse"].append((clock() - started) / 1e3)
    for seq_id in list(engine._tracked):
        engine.abort(seq_id)
    medians = {f"{phase}_us": statistics.median(values) for phase, values in samples.items()}
    total = sum(medians.values())
    return {"batch": batch, "steps": steps, **medians, "total_us": total, "per_token_us": total / batch}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--repeat", type=int, default=1, help="each batch this many times (medians reported each)")
    parser.add_argument("--clock", choices=sorted(_CLOCKS), default="cpu", help="thread CPU time or wall clock")
    parser.add_argument("--cpu-compile", action="store_true", help="the worker's `cpu_compile` (compiles at start-up)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    clock = _CLOCKS[args.clock]
    engine = build_engine(WorkerConfig(model_path=args.model_path, device="cpu", dtype="float32",
                                       max_num_seqs=max(args.batches), cpu_compile=args.cpu_compile), 0)
    engine.async_scheduling = False
    rows = []
    with torch.inference_mode():
        profile_batch(engine, max(args.batches), args.prompt_len, 8, 900_000, clock)  # warm-up
        for r in range(args.repeat):
            for b in args.batches:
                rows.append(profile_batch(engine, b, args.prompt_len, args.steps, 1_000_000 * (r + 1) + 1000 * b, clock))
    print("| batch | " + " | ".join(PHASES) + " | step total | per token |")
    print("| ---: " * (len(PHASES) + 3) + "|")
    for row in rows:
        cells = " | ".join(f"{row[f'{p}_us']:.0f}" for p in PHASES)
        print(f"| {row['batch']} | {cells} | {row['total_us']:.0f} | {row['per_token_us']:.0f} |")
    if args.out:
        args.out.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "clock": args.clock,
                                             "cpu_compile": args.cpu_compile, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
