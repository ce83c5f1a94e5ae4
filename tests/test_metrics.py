"""The lock-free loop histogram exports exactly what prometheus_client's Histogram does."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from llmserve.metrics import LoopHistogram


def test_loop_histogram_exposition_equals_prometheus_histogram() -> None:
    stock_registry, loop_registry = CollectorRegistry(), CollectorRegistry()
    stock = Histogram("x_seconds", "doc", ["model"], buckets=(0.001, 0.01, 0.1), registry=stock_registry)
    loop = LoopHistogram("x_seconds", "doc", "model", (0.1, 0.001, 0.01), registry=loop_registry)
    for model in ("a", "b"):
        for value in (0.0005, 0.001, 0.002, 0.01, 0.05, 0.5, 3.0):
            stock.labels(model).observe(value)
            loop.labels(model).observe(value)
    expected = [line for line in generate_latest(stock_registry).decode().splitlines() if "_created" not in line]
    assert generate_latest(loop_registry).decode().splitlines() == expected
    assert 'x_seconds_bucket{le="0.001",model="a"} 2.0' in expected  # a bound itself falls in its bucket


class _FakeWorker:
    def __init__(self, name: str, model: str, running: int, usage: float) -> None:
        self.name, self.model_names, self.num_running, self.num_waiting = name, (model,), running, 1
        self.kv_cache_usage, self.is_ready = usage, True


def test_without_per_model_series_every_model_sums_into_one() -> None:
    """Arena mode: per-request series and load gauges carry no model or worker (see metrics.py)."""
    from llmserve.metrics import ServerMetrics

    metrics = ServerMetrics(per_model=False)
    metrics.watch_workers([_FakeWorker("worker-0", "a", 2, 0.5), _FakeWorker("worker-1", "b", 3, 0.25)])
    metrics.for_model("a").generation_tokens.inc(5)
    metrics.for_model("b").generation_tokens.inc(7)
    metrics.for_model("b").finished("stop").inc()
    text = metrics.render().decode()
    assert 'llmserve_generation_tokens_total{model="*"} 12.0' in text
    assert 'llmserve_sequences_finished_total{finish_reason="stop",model="*"} 1.0' in text
    assert 'llmserve_num_requests_running{model="*",worker="*"} 5.0' in text
    assert 'llmserve_kv_cache_usage_ratio{model="*",worker="*"} 0.375' in text
    assert 'llmserve_worker_ready{model="a",worker="worker-0"} 1.0' in text  # readiness stays per worker
    samples = [line for line in text.splitlines() if not line.startswith("#") and "worker_ready" not in line]
    assert not [line for line in samples if 'model="a"' in line or 'model="b"' in line or "worker-" in line]
