"""llmserve against its peers, side by side: the same model, the same load, servers one after the other.

Starts `llmserve run` and then `transformers serve --continuous-batching` (transformers' own OpenAI
server: paged attention, continuous batching; `pip install "transformers[serving]"`) on one model
folder, drives each with the same `llmserve bench` load at every concurrency level (chat endpoint,
streaming, greedy, the same seeded prompts), and prints one table per metric with llmserve's ratio
to each peer. No `ignore_eos` is sent, since transformers serve answers 422 to fields it does not
know: both servers get the same OpenAI-only body and output lengths come from `usage`.

    python benchmarks/peers.py --model-path /tmp/tiny --concurrency 1 16 32 --out results/peers.json

`--repeat N` runs the whole comparison N times (servers restarted each time) and reports each run,
so the spread on a shared machine shows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script from a checkout
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from cpu_concurrency import find_free_port, log_tail, stop_server, wait_until_ready  # noqa: E402

from llmserve.bench import BenchOptions, BenchReport, run_bench  # noqa: E402

SERVERS = ("llmserve", "transformers")


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, type=Path, help="model folder with its tokenizer")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--prompts-per-client", type=int, default=4, help="num prompts = this x concurrency")
    parser.add_argument("--min-prompts", type=int, default=16, help="at least this many prompts per level")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of both servers (default: inherited; on a shared, oversubscribed "
                             "machine torch's spinning thread pool can slow a server tenfold)")
    parser.add_argument("--repeat", type=int, default=1, help="whole comparisons, servers restarted each time")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path("results/peers.json"))
    return parser.parse_args(argv)


def server_command(server: str, args: argparse.Namespace, port: int, config_path: Path) -> list[str]:
    """The command line that starts `server` on 127.0.0.1:`port`, as a user would type it."""
    if server == "llmserve":
        return [sys.executable, "-m", "llmserve", "run", str(config_path), "--port", str(port)]
    # transformers serve's console script, from the same environment as this interpreter.
    return [str(Path(sys.executable).with_name("transformers")), "serve", "--continuous-batching",
            "--device", args.device, "--dtype", args.dtype, "--host", "127.0.0.1", "--port", str(port),
            str(args.model_path.resolve())]


def write_llmserve_config(path: Path, args: argparse.Namespace, port: int) -> None:
    """One worker on the model, batch as wide as the widest level; defaults otherwise."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    path.write_text("\n".join([
        "[server]", f"host = {q('127.0.0.1')}", f"port = {port}", "",
        "[[workers]]", f"model_path = {q(str(args.model_path.resolve()))}",
        f"model_names = [{q(served_name('llmserve', args))}]", f"device = {q(args.device)}",
        f"dtype = {q(args.dtype)}", f"max_num_seqs = {max(max(args.concurrency), 8)}",
    ]) + "\n", encoding="utf-8")


def served_name(server: str, args: argparse.Namespace) -> str:
    """The model id each server lists: transformers serve names a local model by its path."""
    return str(args.model_path.resolve()) if server == "transformers" else args.model_path.resolve().name


def bench_options(args: argparse.Namespace, base_url: str, model: str, concurrency: int) -> BenchOptions:
    return BenchOptions(
        base_url=base_url, model=model, endpoint="chat",
        num_prompts=max(concurrency * args.prompts_per_client, args.min_prompts),
        input_len=args.input_len, output_len=args.output_len, tokenizer=str(args.model_path),
        max_concurrency=concurrency, temperature=0.0, ignore_eos=False, show_progress=False,
    )


def to_row(server: str, concurrency: int, report: BenchReport) -> Row:
    m = report.metrics
    return Row(server, concurrency, report.options.num_prompts, m.num_failed, m.output_tokens_per_s,
               m.total_output_tokens / max(m.num_completed, 1), m.ttft.median_ms, m.tpot.median_ms)


def bench_server(server: str, args: argparse.Namespace, tmp: Path) -> list[Row]:
    """Start `server`, warm it up, run every level, stop it."""
    port = find_free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    config_path, log_path = tmp / f"{server}.toml", tmp / f"{server}.log"
    write_llmserve_config(config_path, args, port)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with log_path.open("wb") as log:
        process = subprocess.Popen(server_command(server, args, port, config_path), cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    model = served_name(server, args)
    try:
        startup_s = wait_until_ready(base_url, model, process, args.startup_timeout, log_path)
        print(f"{server} ready in {startup_s:.1f}s", file=sys.stderr)
        run_bench(bench_options(args, base_url, model, 4))  # warm-up: first-call costs, every batch path
        rows = []
        for concurrency in args.concurrency:
            row = to_row(server, concurrency, run_bench(bench_options(args, base_url, model, concurrency)))
            print(f"{server} c={concurrency}: {row.output_tokens_per_s:.1f} tok/s, TPOT p50 "
                  f"{row.tpot_p50_ms} ms, TTFT p50 {row.ttft_p50_ms} ms, {row.num_failed} failed", file=sys.stderr)
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
    by_key = {(r.server, r.concurrency): r for r in rows}
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
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit code 1 when a request failed, 2 when a server did not come up."""
    args = parse_args(argv)
    runs: list[list[Row]] = []
    try:
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="llmserve-peers-") as tmp:
                rows = [row for server in args.servers for row in bench_server(server, args, Path(tmp))]
            runs.append(rows)
            print(markdown_table(rows), flush=True)
    except RuntimeError as exc:
        print(f"peers: {exc}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "model_path": str(args.model_path), "input_len": args.input_len, "output_len": args.output_len,
        "device": args.device, "dtype": args.dtype, "threads": args.threads, "finished_at_unix_s": time.time(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count()},
        "runs": [[asdict(row) for row in rows] for rows in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return 1 if any(row.num_failed for rows in runs for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
