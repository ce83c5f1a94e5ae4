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
