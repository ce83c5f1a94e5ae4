"""CPU concurrency benchmark: does one llmserve CPU worker batch concurrent requests?

Starts `python -m llmserve run CONFIG --port P` on 127.0.0.1 with a tiny model (build one with
`llmserve tiny-model`), waits until `GET /v1/models` lists it, then runs `llmserve bench` on the
chat endpoint at each concurrency level and prints a markdown table of output throughput, TTFT,
ITL and speedup against the first level (concurrency 1 by default). A server without batching
stays near 1x (FastChat 0.2.36 gave ~1.2x at 8 clients).

    python benchmarks/cpu_concurrency.py --model-path models/tiny-llama --out results/cpu_concurrency.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without installing llmserve
    sys.path.insert(0, str(REPO_ROOT))

from llmserve.bench import BenchOptions, BenchReport, report_to_dict, run_bench  # noqa: E402

# Files whose presence means a model folder carries its own tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, type=Path, help="tiny model folder")
    parser.add_argument("--model-name", default=None, help="served model id (default: folder name)")
    parser.add_argument("--out", type=Path, default=Path("results/cpu_concurrency.json"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--prompts-per-client", type=int, default=4, help="num prompts = this x concurrency")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the server")
    parser.add_argument(
        "--no-tokenizer", action="store_true", help="word prompts even if the model has a tokenizer"
    )
    parser.add_argument(
        "--server-module", default="llmserve", help="module run as `python -m MODULE run ...`"
    )
    return parser.parse_args(argv)


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, args: argparse.Namespace, model_name: str, port: int) -> None:
    """Write the server's TOML config: one CPU worker serving the model."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        "[server]",
        f"host = {q('127.0.0.1')}",
        f"port = {port}",
        "",
        "[[workers]]",
        f"model_path = {q(str(args.model_path.resolve()))}",
        f"model_names = [{q(model_name)}]",
        f"device = {q('cpu')}",
        f"dtype = {q(args.dtype)}",
        f"max_num_seqs = {args.max_num_seqs}",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def start_server(module: str, config_path: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Launch the server as a child process, its output going to `log_path`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", module, "run", str(config_path), "--port", str(port)]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def log_tail(log_path: Path, num_lines: int = 40) -> str:
    """The last lines the server wrote, for error messages."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return "(no server log)"


def wait_until_ready(
    base_url: str, model_name: str, server: subprocess.Popen[bytes], timeout_s: float, log_path: Path
) -> float:
    """Poll `GET /v1/models` until it lists `model_name`; returns the seconds it took."""
    start_s = time.monotonic()
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() - start_s < timeout_s:
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode}:\n{log_tail(log_path)}")
            try:
                response = client.get(f"{base_url}/models")
                if response.status_code == 200 and any(
                    m.get("id") == model_name for m in response.json().get("data", [])
                ):
                    return time.monotonic() - start_s
            except (httpx.HTTPError, ValueError):
                pass  # not listening yet, or answering before it is ready
            time.sleep(0.5)
    raise RuntimeError(f"{model_name!r} not listed after {timeout_s:.0f}s:\n{log_tail(log_path)}")


def stop_server(server: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int | None:
    """SIGTERM the server and wait for it to drain; kill it if it will not stop."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return server.returncode


def bench_options(args: argparse.Namespace, base_url: str, model_name: str, concurrency: int) -> BenchOptions:
    """Bench options of one concurrency level."""
    has_tokenizer = any((args.model_path / name).exists() for name in _TOKENIZER_FILES)
    return BenchOptions(
        base_url=base_url,
        model=model_name,
        endpoint="chat",
        num_prompts=concurrency * args.prompts_per_client,
        input_len=args.input_len,
        output_len=args.output_len,
        tokenizer=None if args.no_tokenizer or not has_tokenizer else str(args.model_path),
        max_concurrency=concurrency,
        show_progress=False,
    )


def summarize(reports: Sequence[tuple[int, BenchReport]]) -> list[dict[str, Any]]:
    """One row per level: throughput, p50 latencies and speedup against the first level."""
    base_tps = reports[0][1].metrics.output_tokens_per_s if reports else 0.0
    rows = []
    for concurrency, report in reports:
        m = report.metrics
        rows.append(
            {
                "concurrency": concurrency,
                "num_prompts": report.options.num_prompts,
                "num_failed": m.num_failed,
                "output_tokens_per_s": m.output_tokens_per_s,
                "ttft_p50_ms": m.ttft.median_ms,
                "itl_p50_ms": m.itl.median_ms,
                "speedup": m.output_tokens_per_s / base_tps if base_tps > 0 else None,
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary rows as a markdown table."""

    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    base = rows[0]["concurrency"] if rows else 1
    lines = [
        f"| concurrency | prompts | failed | output tok/s | TTFT p50 (ms) | ITL p50 (ms) | speedup vs {base} |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['num_prompts']} | {r['num_failed']} | {num(r['output_tokens_per_s'], '.1f')} "
            f"| {num(r['ttft_p50_ms'], '.1f')} | {num(r['itl_p50_ms'], '.1f')} | {num(r['speedup'], '.2f')}x |"
        )
    return "\n".join(lines)


def run_levels(args: argparse.Namespace, base_url: str, model_name: str) -> list[tuple[int, BenchReport]]:
    """A short warm-up, then one bench run per concurrency level."""
    warmup_options = dataclasses.replace(
        bench_options(args, base_url, model_name, 1), num_prompts=2, output_len=8
    )
    warmup = run_bench(warmup_options)
    if warmup.metrics.num_failed:
        print(f"warm-up failures: {warmup.metrics.error_counts}", file=sys.stderr)
    reports = []
    for concurrency in args.concurrency:
        report = run_bench(bench_options(args, base_url, model_name, concurrency))
        m = report.metrics
        print(
            f"concurrency {concurrency}: {m.output_tokens_per_s:.1f} tok/s, {m.num_failed} failed",
            file=sys.stderr,
        )
        reports.append((concurrency, report))
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    """Start the server, bench every level, print and save the results.

    Exit code 1 when any request failed, 2 when the server did not come up.
    """
    args = parse_args(argv)
    model_name = args.model_name or args.model_path.resolve().name
    port = args.port or find_free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory(prefix="llmserve-bench-") as tmp:
        config_path, log_path = Path(tmp) / "config.toml", Path(tmp) / "server.log"
        write_config(config_path, args, model_name, port)
        server = start_server(args.server_module, config_path, port, log_path)
        try:
            startup_s = wait_until_ready(base_url, model_name, server, args.startup_timeout, log_path)
            print(f"server ready in {startup_s:.1f}s", file=sys.stderr)
            reports = run_levels(args, base_url, model_name)
        except RuntimeError as exc:  # the server did not come up: its log says why
            print(f"cpu_concurrency: {exc}", file=sys.stderr)
            return 2
        finally:
            exit_code = stop_server(server)
        print(f"server stopped (exit code {exit_code})", file=sys.stderr)
    rows = summarize(reports)
    print(markdown_table(rows))
    result = {
        "model_path": str(args.model_path),
        "model_name": model_name,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "server_startup_s": startup_s,
        "server_exit_code": exit_code,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
        "summary": rows,
        "reports": [report_to_dict(report) for _, report in reports],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return 1 if any(row["num_failed"] for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
