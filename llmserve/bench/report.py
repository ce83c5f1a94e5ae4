"""The outcome of a run: a printable table and a JSON document with the run's parameters."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmserve.bench.client import RequestResult
from llmserve.bench.metrics import BenchMetrics, LatencySummary
from llmserve.bench.options import BenchOptions

# Width of the label column of the printed table.
_LABEL_WIDTH = 40
# Distinct error messages shown in the table (the JSON keeps all).
_MAX_ERRORS_SHOWN = 5


@dataclass(frozen=True)
class BenchReport:
    """A finished run: its options, the model targeted and the aggregate metrics."""

    options: BenchOptions
    model: str
    metrics: BenchMetrics
    is_prompt_len_approx: bool
    """True when prompts were built from words, without a tokenizer."""
    mean_prompt_tokens_built: float
    """Average prompt length as built (tokenizer tokens, or words)."""
    started_at_unix_s: float
    results: list[RequestResult] = field(default_factory=list, repr=False)
    """Per-request records, in prompt order (kept out of the JSON unless asked for)."""


def _ms(value: float | None) -> str:
    """A millisecond value for the table; '-' when there was no sample."""
    return "-" if value is None else f"{value:.2f}"


def _row(label: str, value: object) -> str:
    """One table line: label left, value right."""
    return f"{label:<{_LABEL_WIDTH}}{value}"


def _latency_rows(name: str, summary: LatencySummary) -> list[str]:
    """Mean / median / p99 lines of one latency metric."""
    return [
        _row(f"Mean {name} (ms):", _ms(summary.mean_ms)),
        _row(f"Median {name} (ms):", _ms(summary.median_ms)),
        _row(f"P99 {name} (ms):", _ms(summary.p99_ms)),
    ]


def format_table(report: BenchReport) -> str:
    """Human-readable summary, one metric per line."""
    m = report.metrics
    approx = " (approx.: no tokenizer, word count)" if report.is_prompt_len_approx else ""
    lines = [
        " llmserve bench result ".center(_LABEL_WIDTH + 12, "="),
        _row("Model:", report.model),
        _row("Endpoint:", report.options.url),
        _row("Max concurrency:", report.options.max_concurrency or "unlimited"),
        _row("Request rate (req/s):", report.options.request_rate),
        _row("Mean prompt length as built:", f"{report.mean_prompt_tokens_built:.1f}{approx}"),
        _row("Successful requests:", m.num_completed),
        _row("Failed requests:", m.num_failed),
        _row("Benchmark duration (s):", f"{m.duration_s:.2f}"),
        _row("Total input tokens:", m.total_prompt_tokens),
        _row("Total generated tokens:", m.total_output_tokens),
        _row("Request throughput (req/s):", f"{m.requests_per_s:.2f}"),
        _row("Output token throughput (tok/s):", f"{m.output_tokens_per_s:.2f}"),
        _row("Total token throughput (tok/s):", f"{m.total_tokens_per_s:.2f}"),
    ]
    for name, summary in (("TTFT", m.ttft), ("TPOT", m.tpot), ("ITL", m.itl), ("E2EL", m.e2el)):
        lines += _latency_rows(name, summary)
    for message, count in list(m.error_counts.items())[:_MAX_ERRORS_SHOWN]:
        lines.append(_row(f"Error x{count}:", message))
    lines.append("=" * (_LABEL_WIDTH + 12))
    return "\n".join(lines)


def options_to_dict(options: BenchOptions) -> dict[str, Any]:
    """The run's parameters as JSON-safe values; the API key is never written."""
    params = dataclasses.asdict(options)
    params.pop("api_key", None)
    params["has_api_key"] = options.api_key is not None
    if math.isinf(options.request_rate):
        params["request_rate"] = "inf"
    params["url"] = options.url
    return params


def report_to_dict(report: BenchReport, include_requests: bool = False) -> dict[str, Any]:
    """The report as plain JSON data: parameters, metrics, and optionally every request."""
    data: dict[str, Any] = {
        "options": options_to_dict(report.options),
        "model": report.model,
        "started_at_unix_s": report.started_at_unix_s,
        "is_prompt_len_approx": report.is_prompt_len_approx,
        "mean_prompt_tokens_built": report.mean_prompt_tokens_built,
        "metrics": dataclasses.asdict(report.metrics),
    }
    if include_requests:
        data["requests"] = [dataclasses.asdict(r) for r in report.results]
    return data


def write_json(report: BenchReport, path: str | Path, include_requests: bool = False) -> None:
    """Write the report as indented JSON to `path` (parent folders are created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report_to_dict(report, include_requests), indent=2, allow_nan=False)
    target.write_text(text + "\n", encoding="utf-8")
