"""llmserve against its peers, side by side: the same model, the same load, servers one after the other.

Starts `llmserve run` and then `transformers serve --continuous-batching` (transformers' own OpenAI
server: paged attention, continuous batching; `pip install "transformers[serving]"`) on one model
folder, drives each with the same `llmserve bench` load at every concurrency level (chat endpoint,
streaming, greedy, the same seeded prompts), and prints one table per metric with llmserve's ratio
to each peer. No `ignore_eos` is sent, since transformers serve answers 422 to fields it does not
know: both servers get the same OpenAI-only body and output lengths come from `usage`.

    python benchmarks/peers.py --model-path /tmp/tiny --concurrency 1 16 32 --out results/peers.json

On a GPU (one call of a lent machine is 10 minutes: bound each level and the start-up):

    python benchmarks/peers.py --model-path /tmp/llama-1b --device cuda --dtype bfloat16 \\
        --concurrency 1 256 --num-prompts 16 512 --input-len 512 --output-len 256 \\
        --startup-timeout 240 --level-timeout-s 120 --out gpu-results/peers.json

`--repeat N` runs the whole comparison N times (servers restarted each time) and reports each run,
so the spread on a shared machine shows. `--llmserve-option KEY=VALUE` sets any `[[workers]]` field
of the llmserve config (TOML-typed: `compile=false`, `max_num_batched_tokens=4096`);
`--transformers-arg ARG` adds a flag to transformers serve's command line. `--table-from A.json
B.json` prints the table of saved runs (e.g. each server measured in its own call) and starts nothing.
The JSON is rewritten after every server, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script from a checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from cpu_concurrency import find_free_port, log_tail, stop_server  # noqa: E402

from llmserve.bench import BenchOptions, BenchReport  # noqa: E402
from llmserve.bench.runner import run_bench_async  # noqa: E402
from llmserve.config import WorkerConfig  # noqa: E402

SERVERS = ("llmserve", "transformers")
# Worker fields peers.py writes itself: the served name must be the one the load asks for.
_FIXED_WORKER_KEYS = frozenset({"model_path", "model_names"})
# On a GPU, llmserve's context is capped as in the GPU rows of RESULTS.md (benchmarks/gpu_serve_bench.py)
# rather than the model's own (131k for the 1B preset); raised when a run's prompt + output need more.
GPU_MAX_MODEL_LEN = 2048
# The warm-up before the levels: first-call costs and the batch paths, short answers to keep it brief.
WARMUP_MAX_CONCURRENCY, WARMUP_OUTPUT_LEN = 8, 32


@dataclass(frozen=True)
class Row:
    """One server at one concurrency level."""

    server: str
    concurrency: int
    num_prompts: int
    num_failed: int
    output_tokens_per_s: float
    mean_output_tokens: float
    ttft_p50_ms: float | None
    tpot_p50_ms: float | None
    timed_out: bool = False


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, help="model folder with its tokenizer")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--num-prompts", type=int, nargs="+", default=None,
                        help="requests per level: one number for every level, or one per --concurrency level "
                             "(default: --prompts-per-client x c, at least --min-prompts)")
    parser.add_argument("--prompts-per-client", type=int, default=4, help="num prompts = this x concurrency")
    parser.add_argument("--min-prompts", type=int, default=16, help="at least this many prompts per level")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="both servers' device: cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of both servers (default: inherited; on a shared, oversubscribed "
                             "machine torch's spinning thread pool can slow a server tenfold)")
    parser.add_argument("--llmserve-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a [[workers]] field of llmserve's config, the value TOML-typed "
                             "(true, 4096, 0.9, \"text\"; anything else is a string); repeatable")
    parser.add_argument("--transformers-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument of `transformers serve` (e.g. --transformers-arg=--compile); "
                             "repeatable")
    parser.add_argument("--repeat", type=int, default=1, help="whole comparisons, servers restarted each time")
    parser.add_argument("--startup-timeout", type=float, default=300.0,
                        help="seconds a server may take to answer its first request")
    parser.add_argument("--level-timeout-s", type=float, default=None,
                        help="seconds one level may take; past it the level counts as failed and that "
                             "server's remaining levels are skipped (default: no limit)")
    parser.add_argument("--out", type=Path, default=Path("results/peers.json"))
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="keep each server's config and log here (default: a temporary folder, removed)")
    parser.add_argument("--table-from", type=Path, nargs="+", default=None, metavar="JSON",
                        help="print the table of these saved runs (their last run each) and start nothing")
    args = parser.parse_args(argv)
    if args.table_from is None and args.model_path is None:
        parser.error("--model-path is required (unless --table-from)")
    if args.num_prompts is not None and len(args.num_prompts) not in (1, len(args.concurrency)):
        parser.error(f"--num-prompts: one number, or one per --concurrency level ({len(args.concurrency)})")
    try:
        args.llmserve_options = parse_worker_options(args.llmserve_option)
    except ValueError as exc:
        parser.error(f"--llmserve-option: {exc}")
    return args


def parse_worker_options(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` items as worker fields: a value that parses as a TOML value is that value (true,
    4096, 0.9, "a b", [1, 2]), any other is the string itself (cuda:0, paged)."""
    known = {f.name for f in dataclasses.fields(WorkerConfig)}
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            raise ValueError(f"{item!r}: expected KEY=VALUE")
        if key not in known:
            raise ValueError(f"{key!r} is not a [[workers]] field (llmserve/config.py WorkerConfig)")
        if key in _FIXED_WORKER_KEYS:
            raise ValueError(f"{key!r} is set by peers.py (the model both servers load)")
        try:
            options[key] = tomllib.loads(f"value = {raw.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            options[key] = raw.strip()
    return options


def toml_value(value: Any) -> str:
    """`value` as a TOML value (the types `parse_worker_options` and the worker table produce)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise ValueError(f"no TOML form for {value!r}")


def server_command(server: str, args: argparse.Namespace, port: int, config_path: Path) -> list[str]:
    """The command line that starts `server` on 127.0.0.1:`port`, as a user would type it."""
    if server == "llmserve":
        return [sys.executable, "-m", "llmserve", "run", str(config_path), "--port", str(port)]
    # `transformers serve` through the module behind its console script: the same interpreter (and
    # PYTHONPATH) as this one, wherever the image put the script. The flags are those of 5.17 to 5.24.
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", "--continuous-batching",
            "--device", args.device, "--dtype", args.dtype, "--host", "127.0.0.1", "--port", str(port),
            *args.transformers_arg, str(args.model_path.resolve())]


def server_env(server: str, args: argparse.Namespace) -> dict[str, str]:
    """The environment of a server process: this one's, with the checkout importable, the thread
    count when given, and transformers kept off the network (no Hub, no update check)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    if server == "transformers":
        env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_UPDATE_CHECK="1")
    return env


def llmserve_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The `[[workers]]` table: batch as wide as the widest level; on a GPU the context capped as in
    the GPU rows; defaults otherwise (CUDA graphs, compile, ...); then `--llmserve-option`s."""
    worker: dict[str, Any] = {
        "model_path": str(args.model_path.resolve()), "model_names": [served_name("llmserve", args)],
        "device": args.device, "dtype": args.dtype, "max_num_seqs": max(max(args.concurrency), 8),
    }
    if args.device != "cpu":
        worker["max_model_len"] = max(GPU_MAX_MODEL_LEN, args.input_len + args.output_len + 128)
    return {**worker, **args.llmserve_options}


def write_llmserve_config(path: Path, args: argparse.Namespace, port: int) -> None:
    """The server on 127.0.0.1:`port` with one worker on the model."""
    lines = ["[server]", f"host = {toml_value('127.0.0.1')}", f"port = {port}", "", "[[workers]]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in llmserve_worker(args).items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def served_name(server: str, args: argparse.Namespace) -> str:
    """The model id each server answers to: transformers serve names a local model by its path."""
    return str(args.model_path.resolve()) if server == "transformers" else args.model_path.resolve().name


def level_prompts(args: argparse.Namespace, index: int, concurrency: int) -> int:
    """Requests of the `index`-th level."""
    if args.num_prompts is not None:
        return int(args.num_prompts[index if len(args.num_prompts) > 1 else 0])
    return max(concurrency * args.prompts_per_client, args.min_prompts)


def bench_options(args: argparse.Namespace, base_url: str, model: str, concurrency: int, num_prompts: int,
                  output_len: int | None = None) -> BenchOptions:
    return BenchOptions(
        base_url=base_url, model=model, endpoint="chat", num_prompts=num_prompts, input_len=args.input_len,
        output_len=args.output_len if output_len is None else output_len, tokenizer=str(args.model_path),
        max_concurrency=concurrency, temperature=0.0, ignore_eos=False, show_progress=False,
    )


def wait_until_serving(base_url: str, model: str, process: subprocess.Popen[bytes], timeout_s: float,
                       log_path: Path) -> float:
    """Send a one-token chat request until it is answered 200; returns the seconds it took.

    An answer proves more than `GET /models` can, and transformers serve 5.17 does not list a
    model loaded from a local path there (it lists the Hub cache)."""
    start_s = time.monotonic()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    last = "no answer"
    while (remaining_s := timeout_s - (time.monotonic() - start_s)) > 0:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:  # the first answer may wait for a warm-up (CUDA graphs, compilation): no short read timeout
            response = httpx.post(f"{base_url}/chat/completions", json=body,
                                  timeout=httpx.Timeout(remaining_s, connect=2.0))
            if response.status_code == 200:
                return time.monotonic() - start_s
            last = f"{response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise RuntimeError(f"{model!r} not answering after {timeout_s:.0f}s (last: {last})")


def run_level(options: BenchOptions, timeout_s: float | None) -> BenchReport | None:
    """One bench run; None when it outlasts `timeout_s` (its requests are cancelled)."""
    try:
        return asyncio.run(asyncio.wait_for(run_bench_async(options), timeout_s))
    except TimeoutError:
        return None


def to_row(server: str, concurrency: int, report: BenchReport) -> Row:
    m = report.metrics
    return Row(server, concurrency, report.options.num_prompts, m.num_failed, m.output_tokens_per_s,
               m.total_output_tokens / max(m.num_completed, 1), m.ttft.median_ms, m.tpot.median_ms)


def bench_server(server: str, args: argparse.Namespace, tmp: Path, run: int = 0) -> list[Row]:
    """Start `server`, warm it up, run every level, stop it. Its config and log go to `tmp`."""
    port = find_free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    config_path, log_path = tmp / f"{server}.toml", tmp / f"{server}-{run}.log"
    write_llmserve_config(config_path, args, port)
    with log_path.open("wb") as log:
        process = subprocess.Popen(server_command(server, args, port, config_path), cwd=REPO_ROOT,
                                   env=server_env(server, args), stdout=log, stderr=subprocess.STDOUT)
    model = served_name(server, args)
    rows: list[Row] = []
    try:
        startup_s = wait_until_serving(base_url, model, process, args.startup_timeout, log_path)
        print(f"{server} ready in {startup_s:.1f}s", file=sys.stderr)
        warmup = min(WARMUP_MAX_CONCURRENCY, max(args.concurrency))
        warmup_options = bench_options(args, base_url, model, warmup, 2 * warmup,
                                       min(args.output_len, WARMUP_OUTPUT_LEN))
        if run_level(warmup_options, args.level_timeout_s) is None:
            raise RuntimeError(f"the warm-up outlasted --level-timeout-s {args.level_timeout_s}")
        for index, concurrency in enumerate(args.concurrency):
            num_prompts = level_prompts(args, index, concurrency)
            options = bench_options(args, base_url, model, concurrency, num_prompts)
            report = run_level(options, args.level_timeout_s)
            if report is None:
                print(f"{server} c={concurrency}: past --level-timeout-s {args.level_timeout_s}; "
                      "its remaining levels skipped", file=sys.stderr)
                rows.append(Row(server, concurrency, num_prompts, num_prompts, 0.0, 0.0, None, None,
                                timed_out=True))
                break
            row = to_row(server, concurrency, report)
            print(f"{server} c={concurrency}: {row.output_tokens_per_s:.1f} tok/s, "
                  f"TPOT p50 {row.tpot_p50_ms} ms, TTFT p50 {row.ttft_p50_ms} ms, {row.num_failed} failed",
                  file=sys.stderr)
            rows.append(row)
        return rows
    except RuntimeError as exc:
        raise RuntimeError(f"{server}: {exc}\n{log_tail(log_path)}") from exc
    finally:
        stop_server(process)


def ratio(ours: float | None, theirs: float | None) -> str:
    return "-" if not ours or not theirs else f"{ours / theirs:.2f}x"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: Sequence[Row]) -> str:
    """One line per level: each server's tok/s, TTFT and TPOT, and llmserve's ratios to transformers
    (throughput: ours / theirs, higher is better; latencies: ours / theirs, lower is better)."""
    by_key = {(r.server, r.concurrency): r for r in rows if not r.timed_out}
    levels = sorted({r.concurrency for r in rows})
    lines = ["| c | llmserve tok/s | transformers tok/s | tok/s ratio | llmserve TTFT p50 | transformers TTFT p50 "
             "| TTFT ratio | llmserve TPOT p50 | transformers TPOT p50 | TPOT ratio | mean out tokens (ls / tf) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in levels:
        ours, theirs = by_key.get(("llmserve", c)), by_key.get(("transformers", c))

        def get(row: Row | None, field: str) -> float | None:
            return None if row is None else getattr(row, field)

        lines.append(
            f"| {c} | {_num(get(ours, 'output_tokens_per_s'), ',.0f')} | {_num(get(theirs, 'output_tokens_per_s'), ',.0f')} "
            f"| {ratio(get(ours, 'output_tokens_per_s'), get(theirs, 'output_tokens_per_s'))} "
            f"| {_num(get(ours, 'ttft_p50_ms'), '.1f')} ms | {_num(get(theirs, 'ttft_p50_ms'), '.1f')} ms "
            f"| {ratio(get(ours, 'ttft_p50_ms'), get(theirs, 'ttft_p50_ms'))} "
            f"| {_num(get(ours, 'tpot_p50_ms'), '.2f')} ms | {_num(get(theirs, 'tpot_p50_ms'), '.2f')} ms "
            f"| {ratio(get(ours, 'tpot_p50_ms'), get(theirs, 'tpot_p50_ms'))} "
            f"| {_num(get(ours, 'mean_output_tokens'), '.1f')} / {_num(get(theirs, 'mean_output_tokens'), '.1f')} |")
    timed_out = [f"{r.server} c={r.concurrency}" for r in rows if r.timed_out]
    if timed_out:
        lines.append(f"\nTimed out (not in the table): {', '.join(timed_out)}")
    return "\n".join(lines)


def saved_rows(paths: Sequence[Path]) -> list[Row]:
    """The rows of the last run of each saved JSON, in order."""
    rows = []
    for path in paths:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        rows += [Row(**row) for row in (runs[-1] if runs else [])]
    return rows


def write_result(args: argparse.Namespace, runs: Sequence[Sequence[Row]]) -> None:
    result: dict[str, Any] = {
        "model_path": str(args.model_path), "input_len": args.input_len, "output_len": args.output_len,
        "device": args.device, "dtype": args.dtype, "threads": args.threads,
        "llmserve_worker": llmserve_worker(args), "transformers_args": args.transformers_arg,
        "finished_at_unix_s": time.time(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count()},
        "runs": [[asdict(row) for row in rows] for rows in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Exit code 1 when a request failed or a level timed out, 2 when a server did not come up."""
    args = parse_args(argv)
    if args.table_from is not None:
        print(markdown_table(saved_rows(args.table_from)))
        return 0
    runs: list[list[Row]] = []
    try:
        for _ in range(args.repeat):
            runs.append([])
            with tempfile.TemporaryDirectory(prefix="llmserve-peers-") as tmp:
                log_dir = Path(tmp) if args.log_dir is None else args.log_dir
                log_dir.mkdir(parents=True, exist_ok=True)
                for server in args.servers:
                    runs[-1] += bench_server(server, args, log_dir, len(runs) - 1)
                    write_result(args, runs)
            print(markdown_table(runs[-1]), flush=True)
    except RuntimeError as exc:
        print(f"peers: {exc}", file=sys.stderr)
        return 2
    return 1 if any(row.num_failed for rows in runs for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
