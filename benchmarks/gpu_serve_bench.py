"""The GPU serving benchmark of issue 3, in one go, on a machine with one NVIDIA GPU and no network.

Starts `llmserve run` on the given model (bf16, CUDA graphs, Triton attention), then with
`llmserve bench` (streaming, `ignore_eos` so lengths are exact):
  - latency: one stream of 256 output tokens after a 512-token prompt, a few times;
  - throughput: 512 requests, prompts of 64-512 tokens, 256 output tokens, max concurrency 256;
  - extra concurrencies (16, 64) on a shorter workload;
  - with `--sampled`, the latency and throughput rows again at temperature 1;
  - with `--logprobs`, the same two rows greedy, each token's logprob and its top alternative asked,
    and a mixed row: the throughput workload where 8 of the 256 streams ask for logprobs;
  - with `--throughput-runs N`, the greedy throughput row N times (how much it moves on one host).
Every other row is greedy (temperature 0). Writes every report as JSON and prints a markdown table.
`--rows latency,throughput` runs only those of the four greedy rows (latency, c16, c64, throughput).
`--server-root DIR` starts the server from DIR, so that `python -m llmserve` imports DIR's llmserve
package (an A/B against another commit's code: its llmserve/ in DIR, this script driving both).

    python benchmarks/gpu_serve_bench.py --model-path /tmp/llama-1b --out-dir $OUT
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from llmserve.bench import BenchOptions, report_to_dict, run_bench  # noqa: E402
from llmserve.bench.runner import run_bench_async  # noqa: E402

SERVER = """[server]
port = {port}
"""
WORKER = """[[workers]]
model_path = "{model}"
model_names = ["bench"]
device = "{device}"
dtype = "{dtype}"
max_num_seqs = {max_num_seqs}
max_model_len = 2048
max_num_batched_tokens = {budget}
gpu_memory_utilization = 0.85
cuda_graphs = {graphs}
compile = {compile}
fuse_projections = {fuse}
"""


def start_server(model: str, port: int, log_path: Path, max_num_seqs: int, budget: int,
                 graphs: bool, compile_model: bool, fuse: bool = True, workers: int = 1,
                 server_root: Path = REPO_ROOT, device: str = "cuda") -> subprocess.Popen:
    """`llmserve run` from `server_root` (whose llmserve package it imports) with one worker per GPU
    (cuda:0 .. cuda:N-1) serving the model as "bench"; on the CPU (smoke runs) one float32 worker."""
    config = Path(tempfile.mkdtemp()) / "bench.toml"
    devices = [device] if workers == 1 else [f"cuda:{i}" for i in range(workers)]
    dtype = "float32" if device == "cpu" else "bfloat16"
    config.write_text(SERVER.format(port=port) + "".join(
        WORKER.format(model=model, device=device, dtype=dtype, max_num_seqs=max_num_seqs, budget=budget,
                      graphs=str(graphs).lower(), compile=str(compile_model).lower(), fuse=str(fuse).lower())
        for device in devices))
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "llmserve", "run", str(config)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=server_root, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start; see {log_path}")
        time.sleep(0.5)


def http_stack() -> dict[str, str]:
    """What uvicorn's "auto" settings pick in the server's environment: uvloop/httptools when
    installed (llmserve depends on both), else asyncio/h11, which cost more per streamed chunk."""
    found = {name: importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools")}
    return {"loop": "uvloop" if found["uvloop"] else "asyncio", "http": "httptools" if found["httptools"] else "h11"}


def server_package(server_root: Path) -> str:
    """The llmserve package `python -m llmserve` imports when started from `server_root`."""
    return subprocess.run([sys.executable, "-c", "import llmserve; print(llmserve.__file__)"], cwd=server_root,
                          capture_output=True, text=True, check=True).stdout.strip()


# The rows' workloads: one stream after a 512-token prompt; 512 requests (prompts 64-512) at c=256.
LATENCY = {"input_len": 512, "output_len": 256, "max_concurrency": 1}
THROUGHPUT = {"input_len": 288, "range_ratio": 0.77, "output_len": 256}
GREEDY_ROWS = ("latency", "c16", "c64", "throughput")
SMOKE_LIMITS = {"num_prompts": 4, "input_len": 64, "output_len": 8}  # --device cpu: every row this small


def bench_options(port: int, tokenizer: str, **kw) -> BenchOptions:
    """`llmserve bench` against the server on `port`: streaming completions for the model "bench"."""
    return BenchOptions(base_url=f"http://127.0.0.1:{port}/v1", model="bench", endpoint="completions",
                        tokenizer=tokenizer, show_progress=False, **kw)


def bench(port: int, tokenizer: str, name: str, smoke: bool = False, **kw) -> dict:
    if smoke:
        kw.update({key: min(kw[key], limit) for key, limit in SMOKE_LIMITS.items() if key in kw})
    report = report_to_dict(run_bench(bench_options(port, tokenizer, **kw)))
    report["scenario"] = name
    m = report["metrics"]
    print(f"{name}: {m['output_tokens_per_s']:.0f} out tok/s, {m['requests_per_s']:.2f} req/s, "
          f"TTFT p50 {m['ttft']['median_ms']:.1f} ms, TPOT p50 {m['tpot']['median_ms']:.2f} ms, "
          f"failed {m['num_failed']}", flush=True)
    return report


def bench_mixed(port: int, tokenizer: str, name: str, num_logprob_streams: int = 8) -> dict:
    """The 512-request throughput workload at c=256, of which `num_logprob_streams` streams (and
    their share of requests) ask for logprobs: two load generators at once, one event loop."""
    def options(**kw) -> BenchOptions:
        return bench_options(port, tokenizer, **THROUGHPUT, **kw)

    async def both() -> tuple:
        plain = 256 - num_logprob_streams
        return await asyncio.gather(
            run_bench_async(options(num_prompts=2 * plain, max_concurrency=plain)),
            run_bench_async(options(num_prompts=2 * num_logprob_streams, max_concurrency=num_logprob_streams,
                                    logprobs=1, seed=1)))

    started = time.perf_counter()
    plain, with_logprobs = (report_to_dict(r) for r in asyncio.run(both()))
    wall_s = time.perf_counter() - started
    tokens = plain["metrics"]["total_output_tokens"] + with_logprobs["metrics"]["total_output_tokens"]
    report = {"scenario": name, "metrics": {**plain["metrics"], "output_tokens_per_s": tokens / wall_s},
              "plain": plain, "logprobs": with_logprobs}
    lm = with_logprobs["metrics"]
    report["metrics"]["num_failed"] += lm["num_failed"]
    print(f"{name}: {tokens / wall_s:.0f} out tok/s overall, plain TPOT p50 {plain['metrics']['tpot']['median_ms']:.2f} ms, "
          f"logprobs TPOT p50 {lm['tpot']['median_ms']:.2f} ms, failed {report['metrics']['num_failed']}", flush=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--budget", type=int, default=2048, help="max_num_batched_tokens")
    parser.add_argument("--no-graphs", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="capture the eager forward")
    parser.add_argument("--no-fuse", action="store_true", help="separate q/k/v and gate/up GEMMs")
    parser.add_argument("--workers", type=int, default=1, help="one worker per GPU, cuda:0 .. cuda:N-1")
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    parser.add_argument("--sampled", action="store_true", help="also run the latency and throughput rows at temperature 1")
    parser.add_argument("--logprobs", action="store_true", help="also run them asking for logprobs (top 1)")
    parser.add_argument("--throughput-runs", type=int, default=1, help="times to run the greedy throughput row")
    parser.add_argument("--rows", default=",".join(GREEDY_ROWS),
                        help=f"the greedy rows to run, comma-separated, of {', '.join(GREEDY_ROWS)}")
    parser.add_argument("--server-root", type=Path, default=REPO_ROOT,
                        help="start the server from this folder: its llmserve package serves (A/B runs)")
    parser.add_argument("--device", default="cuda", help="cpu only smoke-tests this script (tiny workloads)")
    args = parser.parse_args()
    rows = set(args.rows.split(","))
    if not rows <= set(GREEDY_ROWS):
        parser.error(f"--rows: unknown {', '.join(sorted(rows - set(GREEDY_ROWS)))}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stack = http_stack()
    args.server_root = args.server_root.resolve()
    package = server_package(args.server_root)
    print(f"server HTTP stack: {stack['loop']} + {stack['http']}; server package {package}", flush=True)
    proc = start_server(args.model_path, args.port, args.out_dir / "server.log", args.max_num_seqs,
                        args.budget, not args.no_graphs, not args.no_compile, not args.no_fuse, args.workers,
                        args.server_root, args.device)
    reports = []
    smoke = args.device == "cpu"
    try:
        tok = args.model_path
        bench(args.port, tok, "warmup", smoke, num_prompts=8, input_len=128, output_len=16, max_concurrency=8)
        if "latency" in rows:
            reports.append(bench(args.port, tok, "latency c=1 in=512 out=256", smoke,
                                 num_prompts=3 if args.quick else 5, **LATENCY))
        for conc in (16, 64):
            if f"c{conc}" in rows:
                reports.append(bench(args.port, tok, f"c={conc} in=256 out=256", smoke, num_prompts=conc * 2,
                                     input_len=256, output_len=256, max_concurrency=conc))
        for run in range(args.throughput_runs if "throughput" in rows else 0):
            reports.append(bench(args.port, tok, "throughput 512 req in=64-512 out=256 c=256"
                                 + (f" (run {run + 1})" if args.throughput_runs > 1 else ""), smoke,
                                 num_prompts=128 if args.quick else 512, max_concurrency=256, **THROUGHPUT))
        if args.sampled:  # the same at temperature 1 (what the OpenAI API does by default)
            reports.append(bench(args.port, tok, "sampled T=1 latency c=1 in=512 out=256", smoke, num_prompts=5,
                                 temperature=1.0, **LATENCY))
            reports.append(bench(args.port, tok, "sampled T=1 throughput 512 req c=256", smoke, num_prompts=512,
                                 max_concurrency=256, temperature=1.0, **THROUGHPUT))
        if args.logprobs:  # greedy, each token's logprob and top alternative sent back
            reports.append(bench(args.port, tok, "logprobs=1 latency c=1 in=512 out=256", smoke, num_prompts=5,
                                 logprobs=1, **LATENCY))
            reports.append(bench(args.port, tok, "logprobs=1 throughput 512 req c=256", smoke, num_prompts=512,
                                 max_concurrency=256, logprobs=1, **THROUGHPUT))
            reports.append(bench_mixed(args.port, tok, "mixed: 8 of 256 streams with logprobs=1, 512 req"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    for report in reports:
        report["server_http_stack"] = stack
        report["server_package"] = package
    (args.out_dir / "serve_bench.json").write_text(json.dumps(reports, indent=2))
    print("| scenario | out tok/s | req/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | ITL p50 ms | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in reports:
        m = r["metrics"]
        print(f"| {r['scenario']} | {m['output_tokens_per_s']:.0f} | {m['requests_per_s']:.2f} | "
              f"{m['ttft']['median_ms']:.1f} | {m['ttft']['p99_ms']:.1f} | {m['tpot']['median_ms']:.2f} | "
              f"{m['itl']['median_ms']:.2f} | {m['num_failed']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
