"""Tests of llmserve/cli/bench.py through the real `llmserve` entry point."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from llmserve.cli import build_parser, main

from .fake_server import MODEL


def test_flags_map_onto_options() -> None:
    from llmserve.cli.bench import options_from_args

    args = build_parser().parse_args(
        [
            "bench",
            "--endpoint",
            "completions",
            "--num-prompts",
            "7",
            "--input-len",
            "32",
            "--output-len",
            "9",
            "--range-ratio",
            "0.25",
            "--max-concurrency",
            "3",
            "--request-rate",
            "2.5",
            "--seed",
            "4",
            "--temperature",
            "0.5",
            "--logprobs",
            "3",
            "--api-key",
            "k",
            "--no-progress",
            "--tokenizer",
            "tok",
        ]
    )
    options = options_from_args(args)
    assert (options.endpoint, options.num_prompts, options.input_len, options.output_len) == (
        "completions",
        7,
        32,
        9,
    )
    assert (options.range_ratio, options.max_concurrency, options.request_rate) == (0.25, 3, 2.5)
    assert (options.seed, options.temperature, options.api_key, options.tokenizer) == (4, 0.5, "k", "tok")
    assert options.show_progress is False and options.logprobs == 3


def test_bad_flags_are_rejected() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--max-concurrency", "0"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--request-rate", "-1"])


def test_run_prints_table_and_writes_json(
    live_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    argv = [
        "bench",
        "--base-url",
        live_url,
        "--model",
        MODEL,
        "--num-prompts",
        "2",
        "--input-len",
        "4",
        "--output-len",
        "2",
        "--no-progress",
        "--result-json",
        str(out),
        "--save-requests",
    ]
    assert main(argv) == 0
    assert re.search(r"^Successful requests:\s+2$", capsys.readouterr().out, re.M)
    data = json.loads(out.read_text())
    assert data["metrics"]["total_output_tokens"] == 4 and len(data["requests"]) == 2


def test_all_failed_exits_1(live_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--base-url", live_url, "--model", "missing", "--num-prompts", "2", "--no-progress"]
    assert main(argv) == 1
    assert re.search(r"^Failed requests:\s+2$", capsys.readouterr().out, re.M)


def test_unreachable_server_without_model_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        assert main(["bench", "--base-url", f"http://127.0.0.1:{port}/v1", "--no-progress"]) == 2
    assert "llmserve bench:" in capsys.readouterr().err


def test_no_ignore_eos_flag() -> None:
    from llmserve.cli.bench import options_from_args

    assert options_from_args(build_parser().parse_args(["bench"])).ignore_eos is True
    assert options_from_args(build_parser().parse_args(["bench", "--no-ignore-eos"])).ignore_eos is False
