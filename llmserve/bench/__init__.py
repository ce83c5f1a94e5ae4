"""`llmserve bench`: a load generator for any OpenAI-compatible streaming server.

Modules, in the order a run uses them: `options` (what to run), `dataset` (random prompts),
`client` (one timed streaming request, parsed with `sse`), `runner` (arrivals, concurrency,
`progress`), `metrics` (pure statistics) and `report` (table and JSON).
"""

from __future__ import annotations

from llmserve.bench.metrics import BenchMetrics, LatencySummary
from llmserve.bench.options import BenchError, BenchOptions
from llmserve.bench.report import BenchReport, format_table, report_to_dict, write_json
from llmserve.bench.runner import run_bench, run_bench_async

__all__ = [
    "BenchError",
    "BenchMetrics",
    "BenchOptions",
    "BenchReport",
    "LatencySummary",
    "format_table",
    "report_to_dict",
    "run_bench",
    "run_bench_async",
    "write_json",
]
