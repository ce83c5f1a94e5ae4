"""/metrics scraped as the inference gateway's endpoint picker scrapes it: each family's type, and
the instance series moving under load, with per-model series shown and with them hidden (the arena)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmserve.config import parse_config
from tests.api.conftest import live_server

TYPES = {"llmserve_gateway_num_requests_waiting": "gauge", "llmserve_gateway_num_requests_running": "gauge",
         "llmserve_gateway_kv_cache_usage_ratio": "gauge", "llmserve_gateway_cache_config_info": "gauge",
         "llmserve_gateway_prefix_cache_queries": "counter", "llmserve_gateway_prefix_cache_hits": "counter"}
MAX_NUM_SEQS = 2


def _config(model_dir: Path, names: list[list[str]], votes: Path) -> object:
    workers = [{"model_path": str(model_dir), "model_names": n, "dtype": "float32", "kv_cache_tokens": 4096,
                "max_num_seqs": MAX_NUM_SEQS} for n in names]
    return parse_config({"workers": workers, "ui": {"votes_path": str(votes)}})


def _scrape(root: str) -> dict[str, dict[str, float]]:
    """family -> {model label: value} of the gateway families, checking each family's type."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(httpx.get(root + "/metrics", timeout=10).text):
        if family.name in TYPES:
            assert family.type == TYPES[family.name], family.name
            out[family.name] = {s.labels["model"]: s.value for s in family.samples if not s.name.endswith("_created")}
    assert set(out) == set(TYPES)
    return out


def _load(root: str, model: str, count: int) -> list[threading.Thread]:
    body = {"model": model, "prompt": "load " * 40, "max_tokens": 120, "ignore_eos": True, "stream": True}

    def stream() -> None:
        with httpx.stream("POST", root + "/v1/completions", json=body, timeout=120) as response:
            for _ in response.iter_lines():
                pass

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _peak_under_load(root: str, model: str) -> dict[str, dict[str, float]]:
    """Scrapes while 2 x max_num_seqs streams run: the scrape with the most requests in flight."""
    threads = _load(root, model, 2 * MAX_NUM_SEQS)
    best: dict[str, dict[str, float]] = {}
    while any(t.is_alive() for t in threads):
        seen = _scrape(root)
        if not best or (seen["llmserve_gateway_num_requests_running"]["*"]
                        + seen["llmserve_gateway_num_requests_waiting"]["*"]
                        > best["llmserve_gateway_num_requests_running"]["*"]
                        + best["llmserve_gateway_num_requests_waiting"]["*"]):
            best = seen
    for thread in threads:
        thread.join(60)
    return best


@pytest.fixture(scope="module")
def per_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One name served: per-model series are shown."""
    votes = tmp_path_factory.mktemp("gw") / "votes.jsonl"
    with live_server(_config(tiny_model_dir, [["tiny-llama"]], votes)) as url:  # type: ignore[arg-type]
        yield url.removesuffix("/v1")


def test_gauges_move_under_load_and_prefix_hits_count(per_model: str) -> None:
    idle = _scrape(per_model)
    assert idle["llmserve_gateway_num_requests_running"] == {"*": 0, "tiny-llama": 0}
    peak = _peak_under_load(per_model, "tiny-llama")
    running, waiting = peak["llmserve_gateway_num_requests_running"], peak["llmserve_gateway_num_requests_waiting"]
    print(f"peak: running={running} waiting={waiting} kv={peak['llmserve_gateway_kv_cache_usage_ratio']}")
    assert running["*"] == running["tiny-llama"] == MAX_NUM_SEQS
    assert waiting["*"] == waiting["tiny-llama"] >= 1
    assert 0 < peak["llmserve_gateway_kv_cache_usage_ratio"]["*"] <= 1
    after = _scrape(per_model)
    assert after["llmserve_gateway_num_requests_running"]["*"] == after["llmserve_gateway_num_requests_waiting"]["*"] == 0
    assert after["llmserve_gateway_kv_cache_usage_ratio"]["*"] == 0  # every sequence's blocks freed
    # Same 40-word prompt four times: all but the first reuse its full blocks.
    queries = after["llmserve_gateway_prefix_cache_queries"]["*"] - idle["llmserve_gateway_prefix_cache_queries"]["*"]
    hits = after["llmserve_gateway_prefix_cache_hits"]["*"] - idle["llmserve_gateway_prefix_cache_hits"]["*"]
    print(f"prefix cache: {hits:.0f} of {queries:.0f} prompt tokens hit")
    assert queries > 0 and 0 < hits < queries


def test_instance_series_stay_useful_while_the_arena_hides_models(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Two names and the UI on: only `model="*"` series, and they still carry the instance's load."""
    with live_server(_config(tiny_model_dir, [["a"], ["b"]], tmp_path / "votes.jsonl")) as url:  # type: ignore[arg-type]
        root = url.removesuffix("/v1")
        peak = _peak_under_load(root, "a")
        info = [f for f in text_string_to_metric_families(httpx.get(root + "/metrics").text)
                if f.name == "llmserve_gateway_cache_config_info"][0].samples
    for family in peak.values():
        assert set(family) == {"*"}
    assert peak["llmserve_gateway_num_requests_running"]["*"] == MAX_NUM_SEQS
    assert peak["llmserve_gateway_num_requests_waiting"]["*"] >= 1
    assert 0 < peak["llmserve_gateway_kv_cache_usage_ratio"]["*"] <= 1
    assert [s.labels["model"] for s in info] == ["*"] and int(info[0].labels["num_gpu_blocks"]) > 0
