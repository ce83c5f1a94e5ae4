"""Tests of llmserve/bench/metrics.py: exact numbers."""

from __future__ import annotations

import pytest

from llmserve.bench.client import RequestResult
from llmserve.bench.metrics import compute_metrics, percentile, summarize_ms, time_per_output_token_s


def test_percentile_interpolates_linearly() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summarize_converts_to_ms() -> None:
    summary = summarize_ms([0.1, 0.2, 0.3])
    assert summary.mean_ms == pytest.approx(200.0)
    assert summary.median_ms == pytest.approx(200.0)
    assert summary.p99_ms == pytest.approx(298.0)
    assert summary.num_samples == 3


def test_summary_of_no_samples_is_none() -> None:
    summary = summarize_ms([])
    assert (summary.mean_ms, summary.median_ms, summary.p99_ms, summary.num_samples) == (None, None, None, 0)


def test_tpot_excludes_the_first_token() -> None:
    result = RequestResult(True, 10, 5, ttft_s=0.1, latency_s=0.5)
    assert time_per_output_token_s(result) == pytest.approx(0.1)
    assert time_per_output_token_s(RequestResult(True, 10, 1, ttft_s=0.1, latency_s=0.5)) is None
    assert time_per_output_token_s(RequestResult(True, 10, 5, ttft_s=None, latency_s=0.5)) is None


def _results() -> list[RequestResult]:
    return [
        RequestResult(True, 10, 5, ttft_s=0.1, itls_s=[0.1, 0.1, 0.1, 0.1], latency_s=0.5),
        RequestResult(True, 20, 3, ttft_s=0.2, itls_s=[0.05, 0.15], latency_s=0.4),
        RequestResult(False, 30, 0, latency_s=0.01, error="HTTP 500: boom"),
        RequestResult(False, 30, 0, latency_s=0.01, error="HTTP 500: boom"),
        RequestResult(False, 30, 0, latency_s=0.01, error="ConnectError: refused"),
    ]


def test_throughput_counts_successful_requests_only() -> None:
    metrics = compute_metrics(_results(), duration_s=2.0)
    assert (metrics.num_completed, metrics.num_failed) == (2, 3)
    assert (metrics.total_prompt_tokens, metrics.total_output_tokens) == (30, 8)
    assert metrics.requests_per_s == pytest.approx(1.0)
    assert metrics.output_tokens_per_s == pytest.approx(4.0)
    assert metrics.total_tokens_per_s == pytest.approx(19.0)
    assert metrics.error_counts == {"HTTP 500: boom": 2, "ConnectError: refused": 1}
    assert list(metrics.error_counts) == ["HTTP 500: boom", "ConnectError: refused"]


def test_latency_summaries() -> None:
    metrics = compute_metrics(_results(), duration_s=2.0)
    assert metrics.ttft.mean_ms == pytest.approx(150.0)
    assert metrics.ttft.p99_ms == pytest.approx(199.0)
    assert metrics.tpot.mean_ms == pytest.approx(100.0)
    assert metrics.tpot.num_samples == 2
    assert metrics.itl.num_samples == 6
    assert metrics.itl.mean_ms == pytest.approx(100.0)
    assert metrics.itl.median_ms == pytest.approx(100.0)
    assert metrics.itl.p99_ms == pytest.approx(147.5)  # rank 4.95 of [50, 100 x4, 150]
    assert metrics.e2el.median_ms == pytest.approx(450.0)


def test_zero_duration_gives_zero_throughput() -> None:
    metrics = compute_metrics([], duration_s=0.0)
    assert (metrics.requests_per_s, metrics.output_tokens_per_s, metrics.total_tokens_per_s) == (0, 0, 0)
    assert metrics.ttft.mean_ms is None
