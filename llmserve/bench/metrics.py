"""Pure statistics over request results: throughput and latency percentiles."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmserve.bench.client import RequestResult


@dataclass(frozen=True)
class LatencySummary:
    """Mean, median and 99th percentile of one latency metric, in milliseconds (None: no data)."""

    mean_ms: float | None
    median_ms: float | None
    p99_ms: float | None
    num_samples: int


@dataclass(frozen=True)
class BenchMetrics:
    """Aggregate results of a run; token totals and latencies count successful requests only."""

    num_completed: int
    num_failed: int
    duration_s: float
    total_prompt_tokens: int
    total_output_tokens: int
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    ttft: LatencySummary
    """Time to first token."""
    tpot: LatencySummary
    """Time per output token after the first, per request: (latency - ttft) / (tokens - 1)."""
    itl: LatencySummary
    """Inter-token latency: every gap between content chunks, pooled over requests."""
    e2el: LatencySummary
    """End-to-end request latency."""
    error_counts: dict[str, int]
    """Distinct error messages of failed requests, most frequent first."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize_ms(values_s: Sequence[float]) -> LatencySummary:
    """Summarize latencies given in seconds as milliseconds."""
    if not values_s:
        return LatencySummary(None, None, None, 0)
    values_ms = [v * 1000.0 for v in values_s]
    return LatencySummary(
        mean_ms=float(np.mean(values_ms)),
        median_ms=percentile(values_ms, 50),
        p99_ms=percentile(values_ms, 99),
        num_samples=len(values_ms),
    )


def time_per_output_token_s(result: RequestResult) -> float | None:
    """Decode time per token after the first; None with fewer than 2 tokens or no TTFT."""
    if result.ttft_s is None or result.num_output_tokens < 2:
        return None
    return (result.latency_s - result.ttft_s) / (result.num_output_tokens - 1)


def _per_second(amount: float, duration_s: float) -> float:
    """`amount / duration_s`, 0 for an empty duration."""
    return amount / duration_s if duration_s > 0 else 0.0


def compute_metrics(results: Sequence[RequestResult], duration_s: float) -> BenchMetrics:
    """Aggregate per-request results of a run that took `duration_s` of wall time."""
    done = [r for r in results if r.is_success]
    failed = [r for r in results if not r.is_success]
    prompt_tokens = sum(r.num_prompt_tokens for r in done)
    output_tokens = sum(r.num_output_tokens for r in done)
    tpots = [t for r in done if (t := time_per_output_token_s(r)) is not None]
    errors = Counter(r.error or "unknown error" for r in failed)
    return BenchMetrics(
        num_completed=len(done),
        num_failed=len(failed),
        duration_s=duration_s,
        total_prompt_tokens=prompt_tokens,
        total_output_tokens=output_tokens,
        requests_per_s=_per_second(len(done), duration_s),
        output_tokens_per_s=_per_second(output_tokens, duration_s),
        total_tokens_per_s=_per_second(prompt_tokens + output_tokens, duration_s),
        ttft=summarize_ms([r.ttft_s for r in done if r.ttft_s is not None]),
        tpot=summarize_ms(tpots),
        itl=summarize_ms([gap for r in done for gap in r.itls_s]),
        e2el=summarize_ms([r.latency_s for r in done]),
        error_counts=dict(errors.most_common()),
    )
