"""benchmarks/peers.py (llmserve against transformers serve) and benchmarks/cpu_step_profile.py.

The peers run itself needs `transformers[serving]`, which CI does not install: here the table, the
commands and a real llmserve-only run; the side-by-side numbers are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmserve.bench import BenchOptions
from llmserve.config import load_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402


def test_the_table_gives_llmserve_over_transformers_per_level() -> None:
    rows = [peers.Row("llmserve", 1, 16, 0, 300.0, 64.0, 10.0, 3.0),
            peers.Row("transformers", 1, 16, 0, 150.0, 64.0, 20.0, 6.0),
            peers.Row("llmserve", 16, 64, 0, 2000.0, 63.5, 40.0, 7.0)]
    lines = peers.markdown_table(rows).splitlines()
    assert lines[2].startswith("| 1 | 300 | 150 | 2.00x | 10.0 ms | 20.0 ms | 0.50x | 3.00 ms | 6.00 ms | 0.50x |")
    assert lines[3].startswith("| 16 | 2,000 | - | - |")  # a level one server lacks


def test_both_servers_start_as_a_user_starts_them(tmp_path: Path) -> None:
    args = peers.parse_args(["--model-path", str(tmp_path), "--concurrency", "1", "8"])
    transformers = peers.server_command("transformers", args, 8123, tmp_path / "c.toml")
    assert transformers[0] == sys.executable  # `transformers serve`'s module, in this environment
    assert transformers[1:7] == ["-m", "transformers.cli.transformers", "serve", "--continuous-batching",
                                 "--device", "cpu"]
    assert transformers[-1] == str(tmp_path.resolve()) == peers.served_name("transformers", args)
    assert peers.server_env("transformers", args)["HF_HUB_OFFLINE"] == "1"  # a GPU machine has no network
    peers.write_llmserve_config(tmp_path / "c.toml", args, 8123)
    (worker,) = load_config(tmp_path / "c.toml").workers
    assert (worker.device, worker.dtype, worker.max_num_seqs, worker.max_model_len) == ("cpu", "float32", 8, 0)
    assert worker.model_names == (tmp_path.resolve().name,)
    options = peers.bench_options(args, "http://127.0.0.1:8123/v1", "m", 8, peers.level_prompts(args, 1, 8))
    assert options.ignore_eos is False and options.temperature == 0.0  # only OpenAI's own fields
    assert options.num_prompts == 32 and options.max_concurrency == 8


def test_the_gpu_run_configures_both_servers(tmp_path: Path) -> None:
    args = peers.parse_args([
        "--model-path", str(tmp_path), "--device", "cuda", "--dtype", "bfloat16", "--concurrency", "1", "256",
        "--num-prompts", "16", "512", "--input-len", "512", "--output-len", "256", "--llmserve-option",
        "compile=false", "--llmserve-option", "max_num_batched_tokens=4096", "--llmserve-option",
        "gpu_memory_utilization=0.9", "--transformers-arg=--cb-use-cuda-graph"])
    peers.write_llmserve_config(tmp_path / "c.toml", args, 8123)
    config = load_config(tmp_path / "c.toml")
    (worker,) = config.workers
    assert (worker.device, worker.dtype, worker.max_num_seqs, worker.max_model_len) == ("cuda", "bfloat16", 256, 2048)
    assert (worker.compile, worker.max_num_batched_tokens, worker.gpu_memory_utilization) == (False, 4096, 0.9)
    assert worker.cuda_graphs is True and worker.async_scheduling is True  # the GPU defaults stay on
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8123)
    command = peers.server_command("transformers", args, 8123, tmp_path / "c.toml")
    assert command[5:12] == ["--device", "cuda", "--dtype", "bfloat16", "--host", "127.0.0.1", "--port"]
    assert command[-2:] == ["--cb-use-cuda-graph", str(tmp_path.resolve())]
    assert [peers.level_prompts(args, i, c) for i, c in enumerate(args.concurrency)] == [16, 512]


def test_transformers_serve_knows_every_flag_given() -> None:
    args = peers.parse_args(["--model-path", "m", "--device", "cuda", "--dtype", "bfloat16"])
    command = peers.server_command("transformers", args, 8123, Path("c.toml"))
    usage = subprocess.run([*command[:4], "--help"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "200", "HF_HUB_DISABLE_UPDATE_CHECK": "1"})
    assert usage.returncode == 0, usage.stderr[-2000:]
    assert all(flag in usage.stdout for flag in command if flag.startswith("--"))


def test_llmserve_options_are_toml_typed() -> None:
    options = peers.parse_worker_options(["compile=true", "max_num_seqs = 32", "gpu_memory_utilization=0.5",
                                          "device=cuda:1", 'chat_template="a b"'])
    assert options == {"compile": True, "max_num_seqs": 32, "gpu_memory_utilization": 0.5, "device": "cuda:1",
                       "chat_template": "a b"}
    assert peers.toml_value(options["chat_template"]) == '"a b"' and peers.toml_value([1, "x"]) == '[1, "x"]'
    for bad, message in (("compile", "expected KEY=VALUE"), ("no_such_field=1", "not a [[workers]] field"),
                         ("model_names=[\"x\"]", "set by peers.py")):
        with pytest.raises(ValueError, match=re.escape(message)):
            peers.parse_worker_options([bad])
    with pytest.raises(SystemExit):
        peers.parse_args(["--model-path", "m", "--llmserve-option", "bogus=1"])
    with pytest.raises(SystemExit):  # neither one count nor one per level
        peers.parse_args(["--model-path", "m", "--concurrency", "1", "2", "3", "--num-prompts", "4", "5"])


def test_a_level_past_its_timeout_is_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    async def forever(options: object) -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(peers, "run_bench_async", forever)
    start_s = time.monotonic()
    assert peers.run_level(BenchOptions(), 0.2) is None
    assert time.monotonic() - start_s < 5
    rows = [peers.Row("llmserve", 1, 4, 0, 100.0, 8.0, 5.0, 2.0),
            peers.Row("transformers", 1, 4, 4, 0.0, 0.0, None, None, timed_out=True)]
    table = peers.markdown_table(rows)
    assert "| 1 | 100 | - | - |" in table and "Timed out (not in the table): transformers c=1" in table


def test_the_table_of_saved_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for server, tok_s in (("llmserve", 300.0), ("transformers", 100.0)):
        row = dataclasses.asdict(peers.Row(server, 256, 512, 0, tok_s, 256.0, 10.0, 3.0))
        (tmp_path / f"{server}.json").write_text(json.dumps({"runs": [[], [row]]}))
    assert peers.main(["--table-from", str(tmp_path / "llmserve.json"), str(tmp_path / "transformers.json")]) == 0
    assert "| 256 | 300 | 100 | 3.00x |" in capsys.readouterr().out


def test_llmserve_alone_runs_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--model-path", str(tiny_model_dir), "--servers",
         "llmserve", "--concurrency", "2", "--min-prompts", "2", "--prompts-per-client", "1", "--output-len", "8",
         "--input-len", "16", "--threads", "1", "--out", str(out), "--llmserve-option", "stream_interval=2",
         "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    (row,) = result["runs"][0]
    assert row["server"] == "llmserve" and row["num_failed"] == 0 and row["output_tokens_per_s"] > 0
    assert "| 2 |" in proc.stdout
    assert result["llmserve_worker"]["stream_interval"] == 2
    assert load_config(tmp_path / "logs" / "llmserve.toml").workers[0].stream_interval == 2
    assert (tmp_path / "logs" / "llmserve-0.log").stat().st_size > 0


def test_step_profile_runs(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cpu_step_profile.py"), "--model-path", str(tiny_model_dir),
         "--batches", "1", "2", "--steps", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["forward_us"] > 0 and r["total_us"] >= r["forward_us"] for r in rows)


def test_parse_args_defaults() -> None:
    args = peers.parse_args(["--model-path", "m"])
    assert isinstance(args, argparse.Namespace) and args.concurrency == [1, 16, 32] and args.output_len == 64
