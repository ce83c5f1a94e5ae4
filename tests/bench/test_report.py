"""Tests of llmserve/bench/report.py, options.py and progress.py."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pytest

from llmserve.bench.client import RequestResult
from llmserve.bench.metrics import compute_metrics
from llmserve.bench.options import BenchError, BenchOptions
from llmserve.bench.progress import ProgressBar
from llmserve.bench.report import BenchReport, format_table, report_to_dict, write_json


def _report(**option_overrides: object) -> BenchReport:
    results = [
        RequestResult(True, 10, 4, ttft_s=0.1, itls_s=[0.1, 0.1, 0.1], latency_s=0.4),
        RequestResult(False, 10, 0, error="HTTP 429: busy"),
    ]
    options = BenchOptions(model="m", api_key="sk-secret", **option_overrides)  # type: ignore[arg-type]
    return BenchReport(
        options=options,
        model="m",
        metrics=compute_metrics(results, 2.0),
        is_prompt_len_approx=True,
        mean_prompt_tokens_built=128.0,
        started_at_unix_s=1700000000.0,
        results=results,
    )


def test_table_lists_counts_throughput_and_latencies() -> None:
    table = format_table(_report())
    assert "Successful requests:" in table and "Failed requests:" in table
    assert re.search(r"^Output token throughput \(tok/s\):\s+2\.00$", table, re.M)
    assert re.search(r"^Median TTFT \(ms\):\s+100\.00$", table, re.M)
    assert "P99 ITL (ms):" in table and "Mean TPOT (ms):" in table
    assert "approx." in table
    assert re.search(r"^Error x1:\s+HTTP 429: busy$", table, re.M)


def test_json_has_parameters_and_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "out" / "bench.json"
    write_json(_report(), path)
    data = json.loads(path.read_text())
    assert data["options"]["request_rate"] == "inf"
    assert data["options"]["has_api_key"] is True
    assert "sk-secret" not in path.read_text()
    assert data["options"]["url"] == "http://127.0.0.1:8000/v1/chat/completions"
    assert data["metrics"]["num_completed"] == 1
    assert data["metrics"]["itl"]["median_ms"] == pytest.approx(100.0)
    assert data["is_prompt_len_approx"] is True and "requests" not in data


def test_json_can_include_every_request() -> None:
    data = report_to_dict(_report(request_rate=4.0), include_requests=True)
    assert data["options"]["request_rate"] == 4.0
    assert [r["is_success"] for r in data["requests"]] == [True, False]


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"num_prompts": 0}, "num_prompts"),
        ({"range_ratio": 1.0}, "range_ratio"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"request_rate": 0.0}, "request_rate"),
        ({"endpoint": "embeddings"}, "endpoint"),
        ({"base_url": "localhost:8000"}, "base_url"),
    ],
)
def test_bad_options_name_the_field(overrides: dict[str, object], name: str) -> None:
    with pytest.raises(BenchError, match=name):
        BenchOptions(**overrides)  # type: ignore[arg-type]


def test_options_url_and_secret_repr() -> None:
    options = BenchOptions(base_url="http://h:1/v1/", endpoint="completions", api_key="sk-x")
    assert options.url == "http://h:1/v1/completions"
    assert "sk-x" not in repr(options)
    assert math.isinf(BenchOptions().request_rate)


def test_progress_bar_draws_only_when_enabled() -> None:
    stream = io.StringIO()
    assert not ProgressBar.should_show(True, stream)  # not a terminal
    bar = ProgressBar(4, is_enabled=True, stream=stream)
    bar.update()
    bar.update()
    bar.close()
    assert "bench [" + "#" * 15 + "." * 15 + "] 2/4" in stream.getvalue()
    assert stream.getvalue().endswith("\n")
    quiet = io.StringIO()
    silent = ProgressBar(4, is_enabled=False, stream=quiet)
    silent.update()
    silent.close()
    assert quiet.getvalue() == "" and silent.num_done == 1
