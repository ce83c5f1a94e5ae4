"""`llmserve bench`: load-test any OpenAI-compatible server (argument parsing only)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from llmserve.bench import BenchError, BenchOptions, format_table, run_bench, write_json


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _rate(text: str) -> float:
    """argparse type: requests per second > 0, or `inf`."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 or inf, got {text}")
    return value


def _json_object(path: str) -> dict[str, Any]:
    """argparse type: a file holding one JSON object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read a JSON schema from {path}: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{path}: a JSON schema is an object")
    return value


def register(subparsers: Any) -> None:
    """Add the `bench` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark an OpenAI-compatible server",
        description="Send random prompts to an OpenAI-compatible server and report throughput and latency.",
    )
    target = parser.add_argument_group("target")
    target.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="server URL including /v1")
    target.add_argument("--model", default=None, help="model id (default: the first one GET /models lists)")
    target.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    target.add_argument("--api-key", default=None, help="sent as Authorization: Bearer KEY")
    target.add_argument("--ca-cert", default=None, metavar="FILE",
                        help="PEM file of the CA of an https server (default: system CAs, or SSL_CERT_FILE)")
    target.add_argument("--timeout", type=float, default=3600.0, help="per-request timeout in seconds")
    data = parser.add_argument_group("prompts")
    data.add_argument("--num-prompts", type=_positive_int, default=100)
    data.add_argument("--input-len", type=_positive_int, default=128, help="prompt tokens")
    data.add_argument("--output-len", type=_positive_int, default=128, help="generated tokens (ignore_eos)")
    data.add_argument("--no-ignore-eos", action="store_true",
                      help="send no ignore_eos (servers that refuse unknown fields); lengths from usage")
    data.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in len*(1±r)")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--tokenizer", default=None, help="local HF tokenizer folder for exact prompt lengths")
    data.add_argument("--temperature", type=float, default=0.0)
    data.add_argument("--logprobs", type=int, default=None, metavar="K",
                      help="ask for each token's logprob and K top alternatives")
    data.add_argument("--json-schema", type=_json_object, default=None, metavar="FILE",
                      help="JSON schema file: every chat answer must follow it (response_format json_schema, "
                           "strict; needs --no-ignore-eos)")
    load = parser.add_argument_group("load")
    load.add_argument(
        "--max-concurrency", type=_positive_int, default=None, help="requests in flight at most"
    )
    load.add_argument(
        "--request-rate", type=_rate, default=math.inf, help="Poisson arrivals per second (inf: all at once)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--result-json", default=None, metavar="FILE", help="write the report as JSON")
    out.add_argument("--save-requests", action="store_true", help="include every request in the JSON")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Map parsed flags onto BenchOptions (which validates them)."""
    return BenchOptions(
        base_url=args.base_url,
        model=args.model,
        endpoint=args.endpoint,
        num_prompts=args.num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        ignore_eos=not args.no_ignore_eos,
        range_ratio=args.range_ratio,
        seed=args.seed,
        tokenizer=args.tokenizer,
        max_concurrency=args.max_concurrency,
        request_rate=args.request_rate,
        temperature=args.temperature,
        logprobs=args.logprobs,
        api_key=args.api_key,
        ca_cert=args.ca_cert,
        request_timeout_s=args.timeout,
        show_progress=not args.no_progress,
        json_schema=args.json_schema,
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit code 1 when every request failed, 2 when it could not start."""
    try:
        report = run_bench(options_from_args(args))
    except BenchError as exc:
        print(f"llmserve bench: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if args.result_json:
        write_json(report, args.result_json, include_requests=args.save_requests)
    return 1 if report.metrics.num_completed == 0 else 0
