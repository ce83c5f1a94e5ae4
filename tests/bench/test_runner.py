"""Tests of llmserve/bench/runner.py: end to end against a fake server on a real port."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest

from llmserve.bench.options import BenchError, BenchOptions
from llmserve.bench.runner import arrival_offsets_s, run_bench_async

from .conftest import TOKEN_DELAY_S
from .fake_server import MODEL, FakeOpenAI


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets_s(4, math.inf, np.random.default_rng(0)) == [0.0] * 4
    assert arrival_offsets_s(0, 5.0, np.random.default_rng(0)) == []


def test_poisson_offsets_have_exponential_gaps() -> None:
    offsets = arrival_offsets_s(4001, 10.0, np.random.default_rng(0))
    gaps = np.diff(offsets)
    assert offsets[0] == 0.0 and bool(np.all(gaps >= 0))
    assert float(np.mean(gaps)) == pytest.approx(0.1, rel=0.05)
    assert float(np.std(gaps)) == pytest.approx(0.1, rel=0.1)  # exponential: std == mean


async def test_end_to_end_counts_and_timings(live_fake: FakeOpenAI, live_url: str) -> None:
    live_fake.bodies.clear()
    live_fake.max_in_flight = 0
    options = BenchOptions(
        base_url=live_url,
        model=MODEL,
        num_prompts=6,
        input_len=10,
        output_len=5,
        max_concurrency=2,
        show_progress=False,
        api_key="sk-test",
    )
    report = await run_bench_async(options)
    m = report.metrics
    assert (m.num_completed, m.num_failed) == (6, 0)
    assert m.total_output_tokens == 30
    assert m.total_prompt_tokens == 60  # the fake counts words; word prompts have input_len words
    assert live_fake.max_in_flight == 2
    assert all(h == "Bearer sk-test" for h in live_fake.auth_headers[-6:])
    assert all(
        b["max_tokens"] == 5 and b["stream_options"] == {"include_usage": True} for b in live_fake.bodies
    )
    # Three waves of two requests, each five tokens TOKEN_DELAY_S apart.
    assert m.duration_s >= 3 * 5 * TOKEN_DELAY_S * 0.9
    assert (m.ttft.num_samples, m.itl.num_samples, m.tpot.num_samples) == (6, 24, 6)
    delay_ms = TOKEN_DELAY_S * 1000
    assert m.itl.median_ms is not None and 0.7 * delay_ms <= m.itl.median_ms <= 4 * delay_ms
    assert m.ttft.median_ms is not None and 0.7 * delay_ms <= m.ttft.median_ms <= 6 * delay_ms
    assert m.tpot.mean_ms is not None and 0.7 * delay_ms <= m.tpot.mean_ms <= 4 * delay_ms
    assert m.output_tokens_per_s == pytest.approx(30 / m.duration_s)
    assert report.is_prompt_len_approx and report.model == MODEL


async def test_model_defaults_to_the_first_listed(live_url: str) -> None:
    options = BenchOptions(
        base_url=live_url,
        endpoint="completions",
        num_prompts=2,
        input_len=3,
        output_len=2,
        request_rate=50.0,
        show_progress=False,
    )
    report = await run_bench_async(options)
    assert report.model == MODEL
    assert report.metrics.num_completed == 2


async def test_failed_requests_are_reported_not_raised(asgi_transport: httpx.ASGITransport) -> None:
    options = BenchOptions(base_url="http://fake/v1", model="missing", num_prompts=3, show_progress=False)
    report = await run_bench_async(options, transport=asgi_transport)
    assert (report.metrics.num_completed, report.metrics.num_failed) == (0, 3)
    assert report.metrics.error_counts == {"HTTP 404: model 'missing' not found": 3}
    assert len(report.results) == 3


async def test_no_model_and_no_server_is_a_bench_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    options = BenchOptions(base_url="http://fake/v1", num_prompts=1, show_progress=False)
    with pytest.raises(BenchError, match="GET http://fake/v1/models"):
        await run_bench_async(options, transport=httpx.MockTransport(refuse))
