"""The model-server metrics the Kubernetes inference gateway's endpoint picker scrapes.

The Gateway API Inference Extension's endpoint picker (EPP) chooses a pod per request from what it
reads on each pod's /metrics: requests queued (gauge), requests running (gauge), KV-cache
utilisation as a fraction 0-1 (gauge), and for prefix-aware scoring the cache's block size (the
`block_size` label of an info gauge). Its metric-name flags take `name{label=value}`, and where
several series match it takes the first, so what it is pointed at must be one series holding the
whole instance: every family here has that series under `model="*"` (all workers of this process
summed), first, always, including while the arena hides per-model series (see metrics.py); one
series per served model follows only when per-model metrics are shown. The flag values:

    --total-queued-requests-metric=llmserve_gateway_num_requests_waiting{model=*}
    --total-running-requests-metric=llmserve_gateway_num_requests_running{model=*}
    --kv-cache-usage-percentage-metric=llmserve_gateway_kv_cache_usage_ratio{model=*}
    --cache-info-metric=llmserve_gateway_cache_config_info{model=*}
    --lora-info-metric=        (empty: llmserve serves no LoRA adapters)

The prefix-cache counters (prompt tokens looked up, tokens found) are what vLLM exports as
`prefix_cache_queries` / `prefix_cache_hits`; dashboards and HPA rules read their rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # metrics.py imports this module
    from llmserve.metrics import WorkerGauges

PREFIX = "llmserve_gateway_"
# The endpoint picker's flags and their values (deploy/kubernetes/base/epp.yaml passes exactly these).
PICKER_FLAGS = {
    "total-queued-requests-metric": PREFIX + "num_requests_waiting{model=*}",
    "total-running-requests-metric": PREFIX + "num_requests_running{model=*}",
    "kv-cache-usage-percentage-metric": PREFIX + "kv_cache_usage_ratio{model=*}",
    "cache-info-metric": PREFIX + "cache_config_info{model=*}",
    "lora-info-metric": "",
}


class KVPool(Protocol):
    """What the collector reads from a worker's KV-cache block pool."""

    block_size: int
    num_blocks: int
    enable_prefix_caching: bool
    num_prefix_hits: int
    num_prefix_queries: int

    @property
    def num_free_blocks(self) -> int: ...


def _pool(worker: WorkerGauges) -> KVPool | None:
    # Embedding engines keep no KV cache, nor does a worker still loading; neither has a pool.
    return getattr(worker, "kv_pool", None)


class GatewayCollector(Collector):
    """Read at scrape time from the workers; `per_model=False` leaves only the instance series."""

    def __init__(self, workers: Iterable[WorkerGauges], per_model: bool, instance_label: str) -> None:
        self.workers = list(workers)
        self.per_model = per_model
        self.instance_label = instance_label

    def groups(self) -> list[tuple[str, list[WorkerGauges]]]:
        """(model label, its workers): the whole instance first, then each model when shown."""
        out = [(self.instance_label, self.workers)]
        if self.per_model:
            by_model: dict[str, list[WorkerGauges]] = {}
            for worker in self.workers:
                by_model.setdefault(worker.model_names[0], []).append(worker)
            out.extend(by_model.items())
        return out

    def collect(self) -> Iterator[Metric]:
        labels = ["model"]
        waiting = GaugeMetricFamily(PREFIX + "num_requests_waiting", "Sequences queued, not yet running", labels=labels)
        running = GaugeMetricFamily(PREFIX + "num_requests_running", "Sequences in the running batch", labels=labels)
        usage = GaugeMetricFamily(PREFIX + "kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0-1)",
                                  labels=labels)
        info = GaugeMetricFamily(PREFIX + "cache_config_info", "KV-cache configuration (value 1)",
                                 labels=[*labels, "block_size", "num_gpu_blocks", "enable_prefix_caching"])
        queries = CounterMetricFamily(PREFIX + "prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                      labels=labels)
        hits = CounterMetricFamily(PREFIX + "prefix_cache_hits", "Prompt tokens found in the prefix cache",
                                   labels=labels)
        for model, workers in self.groups():
            waiting.add_metric([model], sum(w.num_waiting for w in workers))
            running.add_metric([model], sum(w.num_running for w in workers))
            pools = [p for p in map(_pool, workers) if p is not None]
            usage.add_metric([model], kv_usage(pools))
            if pools:
                info.add_metric([model, *_cache_labels(pools)], 1.0)
            queries.add_metric([model], float(sum(p.num_prefix_queries for p in pools)))
            hits.add_metric([model], float(sum(p.num_prefix_hits for p in pools)))
        yield from (waiting, running, usage, info, queries, hits)


def kv_usage(pools: Sequence[KVPool]) -> float:
    """Blocks in use over blocks, across pools (a pool twice the size weighs twice); 0 with none."""
    total = sum(p.num_blocks for p in pools)
    return sum(p.num_blocks - p.num_free_blocks for p in pools) / total if total else 0.0


def _cache_labels(pools: Sequence[KVPool]) -> list[str]:
    """block_size, num_gpu_blocks, enable_prefix_caching over pools: the smallest block (the picker
    hashes prompts in blocks of this size; a finer split still matches a coarser cache), the blocks
    summed, prefix caching on if any pool has it."""
    return [str(min(p.block_size for p in pools)), str(sum(p.num_blocks for p in pools)),
            str(any(p.enable_prefix_caching for p in pools)).lower()]
