"""Prometheus metrics of one server, in a registry of its own (never the global one).

Counters and histograms are fed on the event loop as outputs are routed; gauges (running and
waiting sequences, KV-cache usage) are read from the workers at scrape time.

Per-model labels can name an arena battle's hidden models: whoever reads /metrics before and after
sending one message to a battle's left alias sees which model's counters (or which worker's running
gauge) moved. A key on /metrics does not help, since the arena's voters hold API keys too. So while the
arena can battle (the UI on, two or more names served, `ui.per_model_metrics` off) every per-request
series is summed over all models under `model="*"`, and the load gauges over all workers under
`worker="*"`: one battle's traffic is then indistinguishable from any other model's (`/ready` leaves
per-worker load out likewise). Readiness stays per worker: it moves with loading and failures, never
with a request. The inference gateway's gauges (gateway_metrics.py) keep their whole-instance series,
`model="*"`, in both modes: that is the one the endpoint picker reads.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from llmserve.gateway_metrics import GatewayCollector

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)
AGGREGATE_LABEL = "*"  # the `model` and `worker` label of series summed over every model and worker
_ITL_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class WorkerGauges(Protocol):
    """What the scrape-time collector reads from a worker."""

    name: str

    @property
    def model_names(self) -> tuple[str, ...]: ...
    @property
    def num_running(self) -> int: ...
    @property
    def num_waiting(self) -> int: ...
    @property
    def kv_cache_usage(self) -> float: ...
    @property
    def is_ready(self) -> bool: ...


class ServerMetrics:
    """Every metric llmserve exports; `per_model=False` sums the series of every model (see above)."""

    def __init__(self, per_model: bool = True) -> None:
        self.per_model = per_model
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.prompt_tokens = Counter("llmserve_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter("llmserve_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.requests_finished = Counter("llmserve_sequences_finished", "Sequences finished, by finish reason",
                                         ["model", "finish_reason"], registry=r)
        self.errors = Counter("llmserve_errors", "Error responses, by OpenAI error type and status",
                              ["type", "status"], registry=r)
        self.ttft = Histogram("llmserve_time_to_first_token_seconds", "Time to first token", ["model"],
                              buckets=_LATENCY_BUCKETS_S, registry=r)
        self.itl = LoopHistogram("llmserve_inter_token_latency_seconds", "Time between output events per token",
                                 "model", _ITL_BUCKETS_S, registry=r)
        self.e2e = Histogram("llmserve_e2e_request_latency_seconds", "Sequence latency from submit to finish",
                             ["model"], buckets=_LATENCY_BUCKETS_S, registry=r)

    def for_model(self, model: str) -> ModelSeries:
        """The labelled series of one model, resolved once (label lookups cost on the hot path)."""
        return ModelSeries(self, model if self.per_model else AGGREGATE_LABEL)

    def watch_workers(self, workers: Iterable[WorkerGauges]) -> None:
        """Export the workers' live gauges at scrape time, and the inference gateway's (gateway_metrics.py)."""
        workers = list(workers)
        self.registry.register(_WorkerCollector(workers, self.per_model))
        self.registry.register(GatewayCollector(workers, self.per_model, AGGREGATE_LABEL))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelSeries:
    """One model's children of the labelled metrics."""

    def __init__(self, metrics: ServerMetrics, model: str) -> None:
        self._metrics = metrics
        self._model = model
        self.prompt_tokens = metrics.prompt_tokens.labels(model)
        self.generation_tokens = metrics.generation_tokens.labels(model)
        self.ttft = metrics.ttft.labels(model)
        self.itl = metrics.itl.labels(model)
        self.e2e = metrics.e2e.labels(model)
        self._finished: dict[str, Any] = {}

    def finished(self, reason: str) -> Any:
        child = self._finished.get(reason)
        if child is None:
            child = self._finished[reason] = self._metrics.requests_finished.labels(self._model, reason)
        return child


class _WorkerCollector(Collector):
    def __init__(self, workers: list[WorkerGauges], per_worker: bool) -> None:
        self.workers = workers
        self.per_worker = per_worker

    def collect(self) -> Iterator[Metric]:
        labels = ["worker", "model"]
        running = GaugeMetricFamily("llmserve_num_requests_running", "Sequences in the running batch", labels=labels)
        waiting = GaugeMetricFamily("llmserve_num_requests_waiting", "Sequences queued", labels=labels)
        usage = GaugeMetricFamily("llmserve_kv_cache_usage_ratio", "Share of KV-cache blocks in use", labels=labels)
        healthy = GaugeMetricFamily("llmserve_worker_ready", "1 when the worker serves requests", labels=labels)
        for w in self.workers:
            values = [w.name, w.model_names[0]]
            if self.per_worker:
                running.add_metric(values, w.num_running)
                waiting.add_metric(values, w.num_waiting)
                usage.add_metric(values, w.kv_cache_usage)
            healthy.add_metric(values, 1.0 if w.is_ready else 0.0)
        if not self.per_worker and self.workers:
            total = [AGGREGATE_LABEL, AGGREGATE_LABEL]
            running.add_metric(total, sum(w.num_running for w in self.workers))
            waiting.add_metric(total, sum(w.num_waiting for w in self.workers))
            usage.add_metric(total, sum(w.kv_cache_usage for w in self.workers) / len(self.workers))
        yield from (running, waiting, usage, healthy)


class LoopHistogramSeries:
    """One label value's buckets and sum."""

    __slots__ = ("_bounds", "_counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # the first bucket whose bound is >= value
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count of observations <= le) per bucket, +Inf last."""
        out, total = [], 0
        for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
            total += count
            out.append((floatToGoString(bound), float(total)))
        return out


class LoopHistogram(Collector):
    """A histogram with one label, observed and scraped on the event loop only, so without a lock:
    prometheus_client's Histogram takes one per observation (~1 us), and the inter-token latency is
    observed for every streamed chunk. Exported like a Histogram (`_bucket`, `_count`, `_sum`)."""

    def __init__(self, name: str, documentation: str, label: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry) -> None:
        self._name, self._documentation, self._label = name, documentation, label
        self._bounds = tuple(sorted(buckets))
        self._series: dict[str, LoopHistogramSeries] = {}
        registry.register(self)

    def labels(self, value: str) -> LoopHistogramSeries:
        series = self._series.get(value)
        if series is None:
            series = self._series[value] = LoopHistogramSeries(self._bounds)
        return series

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, series in self._series.items():
            family.add_metric([value], series.cumulative(), series.sum)
        yield family
