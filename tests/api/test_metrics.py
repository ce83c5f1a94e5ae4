"""/metrics: Prometheus text with per-worker gauges, token counters and latency histograms."""

from __future__ import annotations

import re

import httpx


def _value(text: str, name: str, default: float | None = None, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{label_text}}}" if labels else name) + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    if match is None and default is not None:
        return default
    assert match, f"{name} {labels} not in metrics"
    return float(match.group(1))


def test_metrics_count_tokens_and_requests(base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    before = httpx.get(root + "/metrics").text
    out = httpx.post(base_url + "/completions", json={"model": "tiny-llama", "prompt": [1, 2, 3, 4],
                                                      "max_tokens": 7, "ignore_eos": True}, timeout=30).json()
    after = httpx.get(root + "/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    model = {"model": "tiny-llama"}
    assert _value(text, "llmserve_prompt_tokens_total", **model) - _value(
        before, "llmserve_prompt_tokens_total", 0.0, **model) == 4
    assert _value(text, "llmserve_generation_tokens_total", **model) - _value(
        before, "llmserve_generation_tokens_total", 0.0, **model) == out["usage"]["completion_tokens"] == 7
    assert _value(text, "llmserve_sequences_finished_total", model="tiny-llama", finish_reason="length") >= 1
    assert _value(text, "llmserve_time_to_first_token_seconds_count", **model) >= 1
    assert _value(text, "llmserve_inter_token_latency_seconds_count", **model) >= 6
    assert _value(text, "llmserve_num_requests_running", worker="worker-0", model="tiny-llama") == 0
    assert _value(text, "llmserve_num_requests_waiting", worker="worker-0", model="tiny-llama") == 0
    assert _value(text, "llmserve_worker_ready", worker="worker-0", model="tiny-llama") == 1


def test_errors_are_counted_by_type(base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    httpx.post(base_url + "/completions", json={"model": "missing", "prompt": "x"})
    text = httpx.get(root + "/metrics").text
    assert _value(text, "llmserve_errors_total", type="invalid_request_error", status="404") >= 1
