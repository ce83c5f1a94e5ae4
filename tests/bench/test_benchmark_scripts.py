"""The GPU benchmark scripts' CPU smoke modes, so they keep running against the engine they measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.live_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def _run_on_cpu(script: str, out: Path, *args: str) -> dict:
    """Run benchmarks/`script` with `--device cpu --out out`; its exit status must be 0 (for the
    correctness checks: float32 token-identical to model.generate). Returns the JSON it wrote."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--device", "cpu", "--out", str(out), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_step_profile_runs_on_the_cpu(tiny_model_dir, tmp_path: Path) -> None:
    result = _run_on_cpu("gpu_step_profile.py", tmp_path / "profile.json", "--model-path", str(tiny_model_dir),
                         "--steps", "2")
    assert [row["batch"] for row in result["batches"]] == [1, 64, 256]
    assert all(row["postprocess_ms"] > 0 for row in result["batches"])


def test_correctness_check_runs_on_the_cpu(tiny_model_dir, tmp_path: Path) -> None:
    result = _run_on_cpu("gpu_correctness.py", tmp_path / "correctness.json", "--model-path", str(tiny_model_dir),
                         "--num-prompts", "4", "--max-tokens", "8")
    fp32, bf16 = result["checks"]
    assert fp32["token_identical"] == fp32["num_prompts"] == 12 and fp32["prefix_cache_hit_tokens"] > 0
    agreement = bf16["vs_float32_reference"]
    assert set(agreement) == {"llmserve", "transformers_sdpa", "transformers_eager"}
    assert agreement["llmserve"]["runs"] == 12 and agreement["transformers_sdpa"]["runs"] == 4


def test_model_matrix_runs_on_the_cpu(tmp_path: Path) -> None:
    """A fast-path family and the remote-code model (generic path), each in its own child process."""
    result = _run_on_cpu("gpu_model_matrix.py", tmp_path / "matrix.json", "--families", "qwen2", "remote_code",
                         "--scale", "1", "--num-prompts", "2", "--max-tokens", "4", "--jobs", "2")
    families = result["families"]
    assert {name: row["path"] for name, row in families.items()} == {"qwen2": "fast", "remote_code": "generic"}
    for row in families.values():
        bf16, fp32 = row["bfloat16"], row["float32"]
        assert bf16["steps"] == 16 and bf16["max_logprob_diff"] <= bf16["tolerance"] and bf16["within_tolerance"]
        assert fp32["token_identical"] == fp32["runs"] == 4 and fp32["max_logprob_diff"] < 1e-3
    assert families["qwen2"]["hf_yardstick"]["sdpa_valid"]
    assert families["qwen2"]["hf_yardstick"]["bfloat16_eager_vs_sdpa"]["steps"] == 8
    assert not families["remote_code"]["hf_yardstick"]["sdpa_valid"]
    assert (tmp_path / "matrix_logs" / "qwen2.log").exists()


def test_training_then_text_prompt_correctness_run_on_the_cpu(tiny_model_dir, tmp_path: Path) -> None:
    trained = tmp_path / "trained"
    result = _run_on_cpu("gpu_train_checkpoint.py", tmp_path / "train.json", "--model-path", str(tiny_model_dir),
                         "--save-dir", str(trained), "--seconds", "2", "--batch-size", "2", "--seq-len", "32",
                         "--log-every", "1")
    assert result["steps"] >= 1 and len(result["curve"]) == result["steps"]
    assert result["held_out_tokens"] > 1000 and result["train_tokens_in_corpus"] > result["held_out_tokens"]
    assert (trained / "model.safetensors").exists() and (trained / "tokenizer.json").exists()
    check = _run_on_cpu("gpu_correctness.py", tmp_path / "correctness.json", "--model-path", str(trained),
                        "--text-prompts", "--num-prompts", "3", "--max-tokens", "6")
    assert check["prompts"] == "held-out stdlib text"
    assert check["checks"][0]["token_identical"] == 9


def test_generic_throughput_runs_on_the_cpu(tmp_path: Path) -> None:
    result = _run_on_cpu("gpu_generic_throughput.py", tmp_path / "generic.json", "--dtype", "float32",
                         "--hidden-size", "128", "--layers", "4", "--prompt-len", "32", "--max-tokens", "8",
                         "--generate-requests", "2", "--concurrency", "1", "4")
    assert result["path"] == "generic" and result["family"] == "granitemoehybrid"
    assert [row["run"] for row in result["rows"]] == ["model.generate, batch 1", "generic path, c=1",
                                                      "generic path, c=4"]
    assert all(row["output_tokens_per_s"] > 0 for row in result["rows"])
    assert result["rows"][1]["first_request_matching_prefix_with_generate"] == 8  # float32: the same tokens


def test_ab_rows_run_on_the_cpu(tiny_model_dir, tmp_path: Path) -> None:
    """gpu_ab_rows.sh: each side's server imports its own folder's llmserve (here the base is this
    checkout's package under another folder), the two rows only, a table of both."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "llmserve").symlink_to(ROOT / "llmserve")
    port = free_port()  # other test runs may be serving on the default one
    env = {**os.environ, "MODEL": str(tiny_model_dir), "BASE": str(base), "ROUNDS": "1", "PORT": str(port),
           "PYTHON": sys.executable, "BENCH_ARGS": "--device cpu"}
    out = tmp_path / "ab"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_ab_rows.sh"), str(out)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for side, package in (("base", base), ("head", ROOT)):
        reports = json.loads((out / f"{side}-1" / "serve_bench.json").read_text())
        assert [r["scenario"].split()[0] for r in reports] == ["latency", "throughput"]
        assert all(r["server_package"] == str(package / "llmserve" / "__init__.py") for r in reports)
        assert all(r["metrics"]["num_failed"] == 0 and r["metrics"]["output_tokens_per_s"] > 0 for r in reports)
    table = (out / "ab.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| base-1", "| head-1"]


def test_structured_throughput_runs_on_the_cpu(tiny_model_dir, tmp_path: Path) -> None:
    """benchmarks/structured_throughput.py: both rows over HTTP (llmserve bench --json-schema against
    llmserve run), a schema answer that validates, the mask's host time."""
    port = free_port()  # other test runs may be serving on the default one
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "structured_throughput.py"), "--device", "cpu", "--model-path",
         str(tiny_model_dir), "--concurrency", "4", "--num-prompts", "4", "--output-len", "8", "--input-len", "16",
         "--mask-steps", "4", "--rounds", "1", "--port", str(port), "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["row"] for r in result["rows"]] == ["no schema", "JSON schema"]
    assert all(r["completed"] == 4 and r["failed"] == 0 and r["output_tok_s"] > 0 and r["mean_output_tokens"] == 8
               for r in result["rows"])
    assert result["schema_answer_valid"]
    schema = json.loads((tmp_path / "bench_schema.json").read_text())
    sent = {name: json.loads((tmp_path / f"report-{name}-1.json").read_text())["options"]["json_schema"]
            for name in ("plain", "schema")}
    assert sent == {"plain": None, "schema": schema} and schema["required"] == ["id", "kind", "tags", "lines"]
    assert result["mask"]["mask_ms_mean_schema"] > result["mask"]["mask_ms_mean_none"]
