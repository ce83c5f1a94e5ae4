"""The model-family matrix on the GPU (issue 14): bf16 against transformers' own bf16 forward, float32 against generate.

Every family of `llmserve.tiny.families.FAMILIES` and the remote-code model (`llmserve.tiny.remote_code`),
as a random-weight model at a GPU shape (`--scale` times the tiny matrix's widths: hidden 256 and
head_dim 64 by default; each family keeps its own depth, layer pattern and sliding windows of 16-32
tokens), is served by the worker's engine builder with the GPU worker defaults (the path it
chooses; on the fast path Triton attention, CUDA graphs of the compiled forward, fused projections,
async scheduling, prefix cache, chunked prefill). A batch of random-id prompts of 7-410 tokens
(half share a 160-token prefix, most span several windows) runs twice: plain greedy, then greedy
with logprobs (prefix-cache hits).

- bfloat16, against transformers' own bf16 forward with eager attention (5.17's sdpa drops Gemma
  2's soft-cap) over the engine's tokens, teacher-forced so that a near-tie which flips one token
  does not end the comparison: greedy agreement (steps whose token is the reference's argmax;
  prompts where every step is), and the largest |logprob difference| of the chosen tokens. Passes
  within TOLERANCE, the load-time probe's bf16 tolerance (0.25: two bf16 steps at logits of
  magnitude 16-32), every disagreement a near-tie of the reference (its top-2 gap <= TOLERANCE).
  Yardstick: transformers' bf16 sdpa forward against its bf16 eager one on the same tokens, where
  sdpa is valid for the model (its float32 sdpa forward within SDPA_VALID of float32 eager).
- bfloat16 yardsticks (`matrix_noise.py`), over the same served sequences: transformers' own cached
  decode against its own full forward (eager, teacher-forced), next to eager vs sdpa; "own noise" is
  the larger, and the row states how far our path's difference is beyond it, and the tolerance the
  load-time probe's rule gives (twice the own noise, clamped to [0.25, 1.0]).
- models with experts (gpt-oss, Qwen3-MoE, Mixtral, DeepSeek-V3, the hybrid): at the worst served
  position, do the routers of our path (an engine the worker's builder makes without CUDA graphs
  or compilation, so hooks fire) and of the eager reference choose the same experts, and over the
  sequence's output positions, are the large differences the ones with a flip? (`router` in the row.)
- float32: the engine's greedy tokens must equal `model.generate`'s (eager), in every pass; the
  largest |logprob difference| against the model's own float32 forward is reported. Its CUDA graphs
  capture the eager forward unless `--compile-float32` (halves the compiling; the bf16 engine, with
  the worker defaults, checks the compiled forward). `--dtype bfloat16` skips it.

Each family runs in a child process of its own, `--jobs` at once (compiling is CPU-bound and the
families are independent); its log goes to the log folder. JSON to --out, a table printed last.

    python benchmarks/gpu_model_matrix.py --out matrix.json
    python benchmarks/gpu_model_matrix.py --device cpu --scale 1 --families llama remote_code  # smoke
    python benchmarks/gpu_model_matrix.py --device cpu --dtype bfloat16 --scale 1 --families gemma3 gpt_oss
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from gpu_correctness import matching_prefix, reference, run_engine  # noqa: E402
from matrix_noise import cached_rows, moe_shape, router_check, router_verdict, worst_position  # noqa: E402

from llmserve.config import WorkerConfig  # noqa: E402
from llmserve.engine.builder import build_engine  # noqa: E402
from llmserve.probe import MAX_TOLERANCES, TOLERANCES  # noqa: E402
from llmserve.tiny import build_tiny_model  # noqa: E402
from llmserve.tiny.families import FAMILIES, build_family_model  # noqa: E402
from llmserve.tiny.remote_code import build_remote_code_model  # noqa: E402

REMOTE_CODE = "remote_code"
MATRIX = [*sorted(FAMILIES), REMOTE_CODE]
# Slowest first, so the last jobs to start are short ones (experts loop in Python, state-space
# references scan token by token, the rest compile one small graph per shape).
_FIRST = ("deepseek_v3", "gpt_oss", "qwen3_moe", "mixtral", "granitemoehybrid", "mamba", "gemma2", "gemma3")
TOLERANCE = TOLERANCES[torch.bfloat16]
MAX_TOLERANCE = MAX_TOLERANCES[torch.bfloat16]
DTYPES = ("both", "bfloat16")
SDPA_VALID = 1e-3  # float32 eager vs sdpa: 2e-6 where both compute the same attention
_WIDTH_KEYS = ("hidden_size", "n_embd", "intermediate_size", "ffn_dim", "moe_intermediate_size",
               "shared_intermediate_size", "word_embed_proj_dim", "head_dim", "query_pre_attn_scalar",
               "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "mamba_d_head")
PREFIX_LEN, TAILS = 160, (7, 33, 97, 200, 250, 129)  # longest prompt 410: with 32 tokens inside 512 positions


def gpu_shape(family: str, scale: int) -> dict[str, int]:
    """The family's tiny config widened `scale` times (heads, depth and windows as they are)."""
    if family == REMOTE_CODE:
        return {"hidden_size": 64 * scale}
    return {k: v * scale for k, v in FAMILIES[family].config.items() if k in _WIDTH_KEYS and isinstance(v, int)}


def build(family: str, tokenizer_dir: Path, out_dir: Path, scale: int) -> Path:
    if family == REMOTE_CODE:
        return build_remote_code_model(tokenizer_dir, out_dir, seed=0, **gpu_shape(family, scale))
    return build_family_model(family, tokenizer_dir, out_dir, seed=0, **gpu_shape(family, scale))


def make_prompts(num: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Random ids; every other prompt starts with the same 160 tokens (prefix-cache hits)."""
    rng = random.Random(seed)
    shared = [rng.randrange(100, vocab - 300) for _ in range(PREFIX_LEN)]
    return [(shared if i % 2 == 0 else []) + [rng.randrange(100, vocab - 300) for _ in range(TAILS[i % len(TAILS)])]
            for i in range(num)]


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def serve(model_dir: Path, dtype: str, device: str, prompts: list[list[int]], max_tokens: int,
          remote: bool, compile_model: bool = True) -> dict[str, Any]:
    """Both passes through the engine the worker's builder makes: tokens, logprobs, how it ran."""
    config = WorkerConfig(model_path=str(model_dir), device=device, dtype=dtype, max_num_seqs=16,
                          max_num_batched_tokens=512, kv_cache_tokens=16384, trust_remote_code=remote,
                          compile=compile_model)
    started = time.perf_counter()
    engine: Any = build_engine(config, 0)
    build_s = time.perf_counter() - started
    graphs = getattr(getattr(engine, "runner", None), "graphs", None)
    started = time.perf_counter()
    plain = run_engine(engine, prompts, max_tokens, logprobs=False)
    with_logprobs = run_engine(engine, prompts, max_tokens, logprobs=True)
    pool = getattr(engine, "pool", None)
    result = {"path": engine.serving_path.name, "path_reason": engine.serving_path.reason,
              "cuda_graphs": graphs is not None, "compiled": bool(graphs is not None and getattr(graphs.forward_fn, "is_compiled", False)),
              "async_scheduling": bool(getattr(engine, "async_scheduling", False)),
              "prefix_cache_hit_tokens": getattr(pool, "num_prefix_hits", None),
              "build_s": round(build_s, 1), "serve_s": round(time.perf_counter() - started, 2),
              "passes": [[r["tokens"] for r in plain], [r["tokens"] for r in with_logprobs]],
              "logprobs": [r["logprobs"] for r in with_logprobs]}
    del engine
    release()
    return result


def load(model_dir: Path, dtype: torch.dtype, attention: str, device: str, remote: bool) -> Any:
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation=attention,
                                                      trust_remote_code=remote)
    return model.to(device).eval()


def chosen_rows(model: Any, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """log_softmax of the model's own forward (no cache) at each of `tokens`' positions: [N, V]."""
    with torch.inference_mode():
        ids = torch.tensor([prompt + tokens], device=model.device)
        logits = model(ids, use_cache=False).logits[0, len(prompt) - 1: len(prompt) - 1 + len(tokens)]
    return logits.float().log_softmax(-1).cpu()


def rows_for(model: Any, prompts: list[list[int]], runs: list[list[list[int]]]) -> dict[tuple, torch.Tensor]:
    """`chosen_rows` of every distinct (prompt, tokens) among the runs."""
    out: dict[tuple, torch.Tensor] = {}
    for run in runs:
        for prompt, tokens in zip(prompts, run, strict=True):
            key = (tuple(prompt), tuple(tokens))
            if key not in out:
                out[key] = chosen_rows(model, prompt, tokens)
    return out


def agreement(rows: dict[tuple, torch.Tensor], prompts: list[list[int]], runs: list[list[list[int]]],
              logprobs: list[list[float]] | None) -> dict[str, Any]:
    """Greedy agreement of the runs' tokens with the reference rows, and (for the run with
    logprobs, the last) the largest |logprob difference| of the chosen tokens."""
    steps = agreed = prompts_agreed = 0
    gaps: list[float] = []
    diffs: list[float] = []
    for run_index, run in enumerate(runs):
        for i, (prompt, tokens) in enumerate(zip(prompts, run, strict=True)):
            row = rows[(tuple(prompt), tuple(tokens))]  # [N, V]
            chosen = row.gather(-1, torch.tensor(tokens)[:, None])[:, 0]  # [N]
            gap = row.max(-1).values - chosen  # [N]; 0 where the token is the reference's argmax
            same = int((gap == 0).sum())
            steps, agreed, prompts_agreed = steps + len(tokens), agreed + same, prompts_agreed + (same == len(tokens))
            gaps += gap[gap > 0].tolist()
            if logprobs is not None and run_index == len(runs) - 1:
                diffs.append(float((torch.tensor(logprobs[i]) - chosen).abs().max()))
    return {"steps": steps, "argmax_agreed": agreed, "prompts": len(runs) * len(prompts),
            "prompts_all_agreed": prompts_agreed, "max_gap_at_disagreement": max(gaps, default=0.0),
            "max_logprob_diff": max(diffs, default=None)}


def row_difference(a: dict[tuple, torch.Tensor], b: dict[tuple, torch.Tensor]) -> dict[str, Any]:
    """Two references on the same sequences: largest |logprob difference| of the sequences' own
    tokens, and the positions whose argmax differs."""
    diffs, flips, steps = [], 0, 0
    for key, rows_a in a.items():
        tokens = torch.tensor(key[1])[:, None]
        rows_b = b[key]
        diffs.append(float((rows_a.gather(-1, tokens) - rows_b.gather(-1, tokens)).abs().max()))
        flips += int((rows_a.argmax(-1) != rows_b.argmax(-1)).sum())
        steps += len(key[1])
    return {"max_logprob_diff": max(diffs), "argmax_differs": flips, "steps": steps}


def try_rows(model_dir: Path, dtype: torch.dtype, attention: str, device: str, remote: bool,
             prompts: list[list[int]], runs: list[list[list[int]]]) -> dict[tuple, torch.Tensor] | str:
    """The reference rows with this attention, or why transformers would not load it so."""
    try:
        model = load(model_dir, dtype, attention, device, remote)
    except Exception as exc:  # transformers refuses attention implementations a class lacks
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    try:
        return rows_for(model, prompts, runs)
    finally:
        del model
        release()


def check_family(family: str, tokenizer_dir: Path, work: Path, device: str, scale: int, num_prompts: int,
                 max_tokens: int, compile_float32: bool, dtypes: str = "both") -> dict[str, Any]:
    started = time.perf_counter()
    remote = family == REMOTE_CODE
    model_dir = build(family, tokenizer_dir, work / family, scale)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompts = make_prompts(num_prompts, vocab)
    row: dict[str, Any] = {"family": family, "shape": gpu_shape(family, scale),
                           "class": "TinyGLM (remote code)" if remote else FAMILIES[family].model_cls.__name__}
    bf16 = serve(model_dir, "bfloat16", device, prompts, max_tokens, remote)
    last = bf16["passes"][-1]  # the pass with logprobs
    model = load(model_dir, torch.bfloat16, "eager", device, remote)
    eager = rows_for(model, prompts, bf16["passes"])
    bf16_agreement = agreement(eager, prompts, bf16["passes"], bf16["logprobs"])
    try:
        cached: dict[tuple, torch.Tensor] | str = cached_rows(model, prompts, [last])
    except Exception as exc:  # a model whose own cache cannot be teacher-forced this way
        cached = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if moe_shape(model.config) is not None:
        row["router"] = check_router(model, model_dir, device, remote, prompts, last, bf16["logprobs"], eager)
    del model
    release()
    sdpa = try_rows(model_dir, torch.bfloat16, "sdpa", device, remote, prompts, [last])
    # Is sdpa the same attention as eager for this model? Measured in float32, where it should be.
    model = load(model_dir, torch.float32, "eager", device, remote)
    eager32 = rows_for(model, prompts, [last])
    fp32: dict[str, Any] | None = None
    if dtypes == "both":
        expected = reference(model, prompts, max_tokens)
        fp32 = serve(model_dir, "float32", device, prompts, max_tokens, remote, compile_float32)
        fp32_rows = rows_for(model, prompts, fp32["passes"][-1:])
    del model
    release()
    sdpa32 = try_rows(model_dir, torch.float32, "sdpa", device, remote, prompts, [last])
    yardstick: dict[str, Any] = {"sdpa_valid": False}
    if isinstance(sdpa32, str) or isinstance(sdpa, str):
        yardstick["reason"] = f"sdpa not loadable: {sdpa32 if isinstance(sdpa32, str) else sdpa}"
    else:
        float32_gap = row_difference(eager32, sdpa32)["max_logprob_diff"]
        yardstick["float32_eager_vs_sdpa"] = float32_gap
        yardstick["sdpa_valid"] = float32_gap <= SDPA_VALID
        if yardstick["sdpa_valid"]:
            yardstick["bfloat16_eager_vs_sdpa"] = row_difference({k: eager[k] for k in sdpa}, sdpa)
        else:
            yardstick["reason"] = f"float32 sdpa differs from eager by {float32_gap:.2g} (a feature it drops)"
    if isinstance(cached, str):
        yardstick["cached_vs_full_error"] = cached
    else:
        yardstick["bfloat16_cached_vs_full"] = row_difference({k: eager[k] for k in cached}, cached)
    yardstick.update(own_noise(yardstick, bf16_agreement["max_logprob_diff"]))
    row.update({
        "path": bf16["path"], "path_reason": bf16["path_reason"],
        "bfloat16": {**{k: v for k, v in bf16.items() if k not in ("passes", "logprobs")}, **bf16_agreement,
                     "tolerance": TOLERANCE,
                     "within_tolerance": bf16_agreement["max_logprob_diff"] <= TOLERANCE
                     and bf16_agreement["max_gap_at_disagreement"] <= TOLERANCE},
        "hf_yardstick": yardstick})
    row["ok"] = row["bfloat16"]["within_tolerance"]
    if fp32 is not None:
        exact = [matching_prefix(got, want["tokens"]) == max_tokens
                 for run in fp32["passes"] for got, want in zip(run, expected, strict=True)]
        row["float32_path"] = fp32["path"]
        row["float32"] = {**{k: v for k, v in fp32.items() if k not in ("passes", "logprobs")},
                          "token_identical": sum(exact), "runs": len(exact),
                          # against the model's own float32 forward over the engine's tokens
                          "max_logprob_diff": agreement(fp32_rows, prompts, fp32["passes"][-1:],
                                                        fp32["logprobs"])["max_logprob_diff"]}
        row["ok"] = row["ok"] and row["float32"]["token_identical"] == len(exact)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def own_noise(yardstick: dict[str, Any], ours: float) -> dict[str, Any]:
    """The model's own bf16 noise on these sequences (the larger of eager vs sdpa, where valid, and
    cached vs full), how far our path's difference is beyond it, and the probe rule's tolerance."""
    values = [yardstick[k]["max_logprob_diff"] for k in ("bfloat16_eager_vs_sdpa", "bfloat16_cached_vs_full")
              if k in yardstick]
    if not values:
        return {}
    noise = max(values)
    tolerance = min(MAX_TOLERANCE, max(TOLERANCE, 2 * noise))
    return {"own_noise": noise, "ours_beyond_own_noise": ours - noise, "probe_rule_tolerance": tolerance,
            "within_probe_rule_tolerance": ours <= tolerance}


def check_router(model: Any, model_dir: Path, device: str, remote: bool, prompts: list[list[int]],
                 run: list[list[int]], logprobs: list[list[float]], eager: dict[tuple, torch.Tensor]) -> dict[str, Any]:
    """`matrix_noise.router_check` at the served pass's worst position, against the eager model."""
    index, step, diff = worst_position(eager, prompts, run, logprobs)
    config = WorkerConfig(model_path=str(model_dir), device=device, dtype="bfloat16", max_num_seqs=16,
                          max_num_batched_tokens=512, kv_cache_tokens=16384, trust_remote_code=remote,
                          compile=False, cuda_graphs=False, async_scheduling=False, enable_prefix_caching=False)
    try:
        engine: Any = build_engine(config, 0)
        engine_model = engine.runner.model if hasattr(engine, "runner") else engine.forward.model
        check = router_check(model, engine, engine_model, prompts[index], run[index], step, diff)
        check["check_engine_path"] = engine.serving_path.name
    except Exception as exc:  # recorded, the rest of the row stands
        check = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    check["prompt_index"] = index
    check["verdict"] = router_verdict(check)
    return check


def run_child(family: str, args: argparse.Namespace, work: Path, tokenizer_dir: Path, log_dir: Path,
              env: dict[str, str], deadline: float) -> dict[str, Any]:
    """`check_family` in a process of its own; a crash or a timeout is a row with its cause."""
    row_path, log_path = work / f"{family}.json", log_dir / f"{family}.log"
    timeout = min(args.family_timeout, deadline - time.monotonic())
    if timeout <= 0:
        row = {"family": family, "ok": False, "error": f"not run: --time-limit {args.time_limit:.0f} s reached"}
        print(summary_line(row), flush=True)
        return row
    command = [sys.executable, __file__, "--child", family, "--work", str(work), "--tokenizer-dir", str(tokenizer_dir),
               "--device", args.device, "--scale", str(args.scale), "--num-prompts", str(args.num_prompts),
               "--max-tokens", str(args.max_tokens), "--dtype", args.dtype,
               *(["--compile-float32"] if args.compile_float32 else [])]
    started = time.perf_counter()
    with log_path.open("w") as log:
        try:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    if row_path.exists():
        row = json.loads(row_path.read_text())
    else:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        row = {"family": family, "ok": False, "error": f"no result in {time.perf_counter() - started:.0f} s: "
               + " | ".join(tail)}
    print(summary_line(row), flush=True)
    return row


def _yardsticks(y: dict[str, Any]) -> tuple[str, str, str]:
    """transformers' own bf16 eager vs sdpa and cached vs full, and our path beyond the larger, as text."""
    sdpa = f"{y['bfloat16_eager_vs_sdpa']['max_logprob_diff']:.3f}" if y["sdpa_valid"] else "n/a"
    cached = (f"{y['bfloat16_cached_vs_full']['max_logprob_diff']:.3f}" if "bfloat16_cached_vs_full" in y
              else "n/a")
    beyond = f"{y['ours_beyond_own_noise']:+.3f}" if "ours_beyond_own_noise" in y else "n/a"
    return sdpa, cached, beyond


def summary_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['family']}: ERROR {row['error'][-600:]}"
    b, y = row["bfloat16"], row["hf_yardstick"]
    sdpa, cached, beyond = _yardsticks(y)
    sdpa = sdpa if y["sdpa_valid"] else f"n/a ({y['reason']})"
    line = (f"{row['family']}: {row['path']} path (compiled={b['compiled']}, graphs={b['cuda_graphs']}); bf16 argmax "
            f"{b['argmax_agreed']}/{b['steps']} steps, {b['prompts_all_agreed']}/{b['prompts']} prompts, max |dlogprob| "
            f"{b['max_logprob_diff']:.3f} (tolerance {b['tolerance']}), largest gap at a disagreement "
            f"{b['max_gap_at_disagreement']:.3f}; transformers bf16 eager vs sdpa {sdpa}, cached vs full {cached}; "
            f"ours beyond the larger {beyond}")
    if "router" in row:
        line += f"; router: {row['router']['verdict']}"
    if "float32" in row:
        f = row["float32"]
        line += (f"; float32 {f['token_identical']}/{f['runs']} token-identical, max |dlogprob| "
                 f"{f['max_logprob_diff']:.1e}")
    return f"{line}; {row['seconds']} s  ({row['path_reason']})"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\nbf16: teacher-forced against transformers' bf16 eager forward, tolerance {TOLERANCE}; HF: transformers' "
          "own bf16 eager vs sdpa and cached decode vs full forward on the same sequences; beyond: our max dlogprob "
          "minus the larger; float32: against generate")
    print("| family | path (bf16) | compiled | bf16 argmax agreed | bf16 prompts all agreed | bf16 max dlogprob | "
          "HF eager vs sdpa | HF cached vs full | beyond | fp32 token-identical | fp32 max dlogprob | s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['family']} | error | | | | | | | | | | |")
            continue
        b, f = r["bfloat16"], r.get("float32")
        sdpa, cached, beyond = _yardsticks(r["hf_yardstick"])
        path = r["path"] if r.get("float32_path", r["path"]) == r["path"] else f"{r['path']} (float32: {r['float32_path']})"
        fp32 = f"{f['token_identical']}/{f['runs']} | {f['max_logprob_diff']:.1e}" if f else "not run | not run"
        print(f"| {r['family']} | {path} | {b['compiled']} | {b['argmax_agreed']}/{b['steps']} | "
              f"{b['prompts_all_agreed']}/{b['prompts']} | {b['max_logprob_diff']:.3f} | {sdpa} | {cached} | {beyond} | "
              f"{fp32} | {r['seconds']} |")
    routed = [r for r in rows if "router" in r]
    if routed:
        print("\nRouters (models with experts), at the worst served position and over its sequence:")
        for r in routed:
            print(f"- {r['family']}: {r['router']['verdict']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=MATRIX, choices=MATRIX)
    parser.add_argument("--scale", type=int, default=4, help="widths times the tiny matrix's (1: its very shapes)")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=12, help="families checked at once, each in its own process")
    parser.add_argument("--family-timeout", type=float, default=240.0, help="seconds one family may take")
    parser.add_argument("--time-limit", type=float, default=float("inf"),
                        help="seconds for the whole matrix: families still running then are stopped, "
                             "those not started are rows saying so")
    parser.add_argument("--compile-float32", action="store_true",
                        help="compile the float32 engine's forward too (its CUDA graphs capture the eager one otherwise)")
    parser.add_argument("--dtype", default="both", choices=DTYPES,
                        help="both: bfloat16 against transformers' bf16 and float32 against generate; "
                             "bfloat16: the first only (with its yardsticks and router checks)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--log-dir", type=Path, default=None, help="per-family logs (default: beside --out)")
    parser.add_argument("--device", default="cuda", help="cpu only smoke-tests this script")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.max_tokens > 512 - PREFIX_LEN - max(TAILS):
        parser.error(f"--max-tokens: at most {512 - PREFIX_LEN - max(TAILS)} (the families have 512 positions)")
    if args.child:
        try:
            row = check_family(args.child, args.tokenizer_dir, args.work, args.device, args.scale, args.num_prompts,
                               args.max_tokens, args.compile_float32, args.dtype)
        except Exception:
            row = {"family": args.child, "ok": False, "error": traceback.format_exc(limit=-4)}
        (args.work / f"{args.child}.json").write_text(json.dumps(row, indent=2))
        return 0
    work = Path(tempfile.mkdtemp(prefix="llmserve-matrix-"))
    log_dir = args.log_dir or (args.out.parent / f"{args.out.stem}_logs" if args.out else work / "logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = build_tiny_model(work / "tokenizer")
    # Each child compiles with its share of the cores (inductor starts a worker per core otherwise).
    share = str(max(1, (os.cpu_count() or 1) // args.jobs))
    env = {"TORCHINDUCTOR_COMPILE_THREADS": share, "OMP_NUM_THREADS": share, **os.environ, "PYTHONUNBUFFERED": "1"}
    order = sorted(args.families, key=lambda f: (_FIRST.index(f) if f in _FIRST else len(_FIRST), f))
    started = time.perf_counter()
    deadline = time.monotonic() + args.time_limit
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda f: run_child(f, args, work, tokenizer_dir, log_dir, env, deadline), order))
    rows = sorted(done, key=lambda r: MATRIX.index(r["family"]))
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    results = {"device": device, "torch": torch.__version__, "scale": args.scale, "num_prompts": args.num_prompts,
               "max_tokens": args.max_tokens, "jobs": args.jobs, "bf16_tolerance": TOLERANCE,
               "float32_compiled": args.compile_float32, "dtype": args.dtype,
               "wall_s": round(time.perf_counter() - started, 1), "families": {r["family"]: r for r in rows}}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print_table(rows)
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} families pass, {results['wall_s']} s with {args.jobs} jobs")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
