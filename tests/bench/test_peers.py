"""benchmarks/peers.py (llmserve against transformers serve) and benchmarks/cpu_step_profile.py.

The peers run itself needs `transformers[serving]`, which CI does not install: here the table, the
commands and a real llmserve-only run; the side-by-side numbers are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

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
    assert transformers[1:5] == ["serve", "--continuous-batching", "--device", "cpu"]
    assert transformers[-1] == str(tmp_path.resolve()) == peers.served_name("transformers", args)
    peers.write_llmserve_config(tmp_path / "c.toml", args, 8123)
    assert "max_num_seqs = 8" in (tmp_path / "c.toml").read_text()
    options = peers.bench_options(args, "http://127.0.0.1:8123/v1", "m", 8)
    assert options.ignore_eos is False and options.temperature == 0.0  # only OpenAI's own fields
    assert options.num_prompts == 32 and options.max_concurrency == 8


def test_llmserve_alone_runs_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--model-path", str(tiny_model_dir), "--servers",
         "llmserve", "--concurrency", "2", "--min-prompts", "2", "--prompts-per-client", "1", "--output-len", "8",
         "--input-len", "16", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["runs"][0]
    assert row["server"] == "llmserve" and row["num_failed"] == 0 and row["output_tokens_per_s"] > 0
    assert "| 2 |" in proc.stdout


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
