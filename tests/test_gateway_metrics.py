"""The inference gateway's gauges: one instance series the picker can be pointed at, first, in both modes."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from llmserve.engine.kv_cache import BlockPool
from llmserve.engine.request import SamplingParams, Sequence
from llmserve.gateway_metrics import PICKER_FLAGS, kv_usage
from llmserve.metrics import ServerMetrics

TYPES = {"total-queued-requests-metric": "gauge", "total-running-requests-metric": "gauge",
         "kv-cache-usage-percentage-metric": "gauge", "cache-info-metric": "gauge"}


def _spec(value: str) -> tuple[str, dict[str, str]]:
    """A picker flag's `name{label=value,...}` as the picker splits it (values unquoted)."""
    name, _, rest = value.partition("{")
    pairs = [p.split("=") for p in rest.rstrip("}").split(",")] if rest else []
    return name.strip(), {k.strip(): v.strip() for k, v in pairs}


@dataclass
class _Pool:
    block_size: int
    num_blocks: int
    num_free_blocks: int
    enable_prefix_caching: bool = True
    num_prefix_hits: int = 0
    num_prefix_queries: int = 0


@dataclass
class _Worker:
    name: str
    model_names: tuple[str, ...]
    num_running: int
    num_waiting: int
    kv_pool: _Pool | None
    kv_cache_usage: float = 0.0
    is_ready: bool = True


def _workers() -> list[_Worker]:
    return [_Worker("worker-0", ("a",), 3, 2, _Pool(16, 100, 25, num_prefix_hits=32, num_prefix_queries=90)),
            _Worker("worker-1", ("b",), 1, 0, _Pool(32, 300, 300, num_prefix_hits=0, num_prefix_queries=10)),
            _Worker("worker-2", ("e",), 4, 1, None)]  # an embedding worker: load, no KV cache


def _families(per_model: bool) -> dict:
    metrics = ServerMetrics(per_model=per_model)
    metrics.watch_workers(_workers())
    text = metrics.render().decode()
    return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("llmserve_gateway_")}


def _first_matching(family, labels: dict[str, str]):
    """What the endpoint picker reads for `name{labels}`: the first sample whose labels include them."""
    return next(s for s in family.samples if labels.items() <= s.labels.items())


def test_the_picker_reads_instance_totals_with_the_documented_flags_per_model_on_and_off() -> None:
    assert PICKER_FLAGS["lora-info-metric"] == ""  # no LoRA adapters: the picker skips that scrape
    for per_model in (True, False):
        families = _families(per_model)
        read = {}
        for flag, kind in TYPES.items():
            name, labels = _spec(PICKER_FLAGS[flag])
            assert labels == {"model": "*"} and families[name].type == kind
            read[flag] = _first_matching(families[name], labels)
            assert families[name].samples[0] is read[flag]  # first: a flag without a selector reads it too
        assert read["total-queued-requests-metric"].value == 3
        assert read["total-running-requests-metric"].value == 8
        assert read["kv-cache-usage-percentage-metric"].value == 75 / 400  # blocks in use over blocks, all pools
        assert read["cache-info-metric"].labels == {"model": "*", "block_size": "16", "num_gpu_blocks": "400",
                                                   "enable_prefix_caching": "true"}
        assert families["llmserve_gateway_prefix_cache_queries"].type == "counter"
        assert families["llmserve_gateway_prefix_cache_hits"].type == "counter"
        hits = [s for s in families["llmserve_gateway_prefix_cache_hits"].samples if s.name.endswith("_total")]
        assert hits[0].value == 32


def test_per_model_series_follow_only_when_shown() -> None:
    shown = _families(per_model=True)
    waiting = {s.labels["model"]: s.value for s in shown["llmserve_gateway_num_requests_waiting"].samples}
    assert waiting == {"*": 3, "a": 2, "b": 0, "e": 1}
    usage = {s.labels["model"]: s.value for s in shown["llmserve_gateway_kv_cache_usage_ratio"].samples}
    assert usage == {"*": 75 / 400, "a": 0.75, "b": 0.0, "e": 0.0}
    hidden = _families(per_model=False)  # the arena can battle: nothing names a model
    for family in hidden.values():
        assert {s.labels["model"] for s in family.samples} == {"*"}


def test_block_pool_counts_prefix_queries_and_hits_in_tokens() -> None:
    pool = BlockPool(num_blocks=16, block_size=4)
    first = Sequence(0, list(range(10)), SamplingParams(max_tokens=1))
    assert pool.allocate(first)
    first.num_computed_tokens = 10
    pool.register_computed(first)
    second = Sequence(1, [*range(10), 99], SamplingParams(max_tokens=1))
    assert pool.allocate(second)
    assert (pool.num_prefix_queries, pool.num_prefix_hits) == (21, 8)  # two full 4-token blocks reused
    assert kv_usage([pool]) == pool.usage
