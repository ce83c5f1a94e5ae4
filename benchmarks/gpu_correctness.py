"""GPU correctness of the engine against `model.generate` (run on a CUDA machine).

float32: every greedy output must be token-identical to `model.generate` run on each prompt alone,
for a batch of mixed-length prompts that join the running batch together, chunked prefill and
prefix-cache hits included (prompts share long prefixes and the batch runs twice).
bfloat16: reports how many prompts match for their first 32 greedy tokens and the largest
difference of the chosen tokens' logprobs over the matching prefix. The batch runs three times:
twice plain greedy (async scheduling; the second pass hits the prefix cache), then with logprobs
(synchronous steps; the logprob differences come from this pass). How far greedy order survives
bf16 at all on this model is measured too, with nothing of ours involved: transformers' bf16 runs
(SDPA and eager attention) against each other and, like ours, against the float32 greedy tokens.

    python benchmarks/gpu_correctness.py --model-path /tmp/llama-1b --out results.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from llmserve.config import WorkerConfig  # noqa: E402
from llmserve.engine.builder import build_engine  # noqa: E402
from llmserve.engine.request import SamplingParams  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from gpu_train_checkpoint import corpus_token_split  # noqa: E402


def make_prompts(vocab: int, num: int, seed: int, text: list[int] | None = None) -> list[list[int]]:
    """Mixed lengths; every third prompt reuses the long prefix of the first one.

    Tokens are random ids, or with `text` (a tokenized corpus) random windows of it.
    """
    rng = random.Random(seed)

    def draw(length: int) -> list[int]:
        if text is None:
            return [rng.randrange(100, vocab - 300) for _ in range(length)]
        start = rng.randrange(0, len(text) - length)
        return text[start:start + length]

    shared = draw(300)
    prompts = []
    for i in range(num):
        tail = draw(rng.choice([7, 33, 129, 257, 400, 613]))
        prompts.append(shared + tail if i % 3 == 0 else tail)
    return prompts


def run_engine(engine, prompts: list[list[int]], max_tokens: int, logprobs: bool) -> list[dict]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                            logprobs=0 if logprobs else None)
    results = {i: {"tokens": [], "logprobs": []} for i in range(len(prompts))}
    for i, ids in enumerate(prompts):
        engine.add(i, ids, params)
    while engine.has_work:
        for out in engine.step():
            results[out.seq_id]["tokens"] += out.token_ids
            results[out.seq_id]["logprobs"] += [lp.logprob for lp in out.logprobs]
    return [results[i] for i in range(len(prompts))]


def reference(model, prompts: list[list[int]], max_tokens: int) -> list[dict]:
    out = []
    with torch.inference_mode():
        for ids in prompts:
            gen = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
            tokens = gen.sequences[0, len(ids):].tolist()
            rows = [torch.log_softmax(s[0].float(), -1) for s in gen.scores]
            logprobs = [row[t].item() for row, t in zip(rows, tokens, strict=True)]
            out.append({"tokens": tokens, "logprobs": logprobs, "rows": rows})
    return out


def hf_reference(model_path: str, torch_dtype: torch.dtype, attention: str, device: str,
                 prompts: list[list[int]], max_tokens: int) -> list[dict]:
    """`reference` with transformers' model in this dtype and attention implementation."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype, attn_implementation=attention)
    try:
        return reference(model.to(device), prompts, max_tokens)
    finally:
        del model
        torch.cuda.empty_cache()


def matching_prefix(got: list[int], want: list[int]) -> int:
    same = 0
    while same < min(len(got), len(want)) and got[same] == want[same]:
        same += 1
    return same


def agreement(runs: list[list[int]], truth: list[list[int]], first: int) -> dict:
    """How many runs keep the first `first` tokens of their truth, and the mean matching prefix."""
    prefixes = [matching_prefix(a, b) for a, b in zip(runs, truth, strict=True)]
    return {"runs": len(prefixes), "first": first, "first_match": sum(p >= first for p in prefixes),
            "mean_matching_prefix": round(sum(prefixes) / len(prefixes), 1)}


def check(model_path: str, dtype: str, num_prompts: int, max_tokens: int,
          float32_tokens: list[list[int]] | None = None, device: str = "cuda",
          text: list[int] | None = None) -> dict:
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    config = WorkerConfig(model_path=model_path, device=device, dtype=dtype, max_model_len=2048,
                          max_num_seqs=64, max_num_batched_tokens=1024, kv_cache_tokens=131072)
    engine = build_engine(config, 0)
    graphs = engine.runner.graphs
    compiled = bool(graphs is not None and getattr(graphs.forward_fn, "is_compiled", False))
    engine_async = engine.async_scheduling
    prompts = make_prompts(engine.vocab_size, num_prompts, seed=0, text=text)
    started = time.perf_counter()
    # Plain greedy steps run with async scheduling (queued a step ahead); asking for logprobs
    # makes every step synchronous. Passes after the first hit the prefix cache.
    first = run_engine(engine, prompts, max_tokens, logprobs=False)
    second = run_engine(engine, prompts, max_tokens, logprobs=False)
    third = run_engine(engine, prompts, max_tokens, logprobs=True)
    engine_s = time.perf_counter() - started
    hits = engine.pool.num_prefix_hits
    del engine
    torch.cuda.empty_cache()
    expected = hf_reference(model_path, torch_dtype, "sdpa", device, prompts, max_tokens)
    first32 = min(32, max_tokens)
    # How fragile greedy order is in this dtype, with nothing of ours involved: transformers' eager
    # attention against its SDPA attention on the same prompts.
    hf_eager_first32 = None
    vs_float32 = None
    if dtype != "float32":
        eager = hf_reference(model_path, torch_dtype, "eager", device, prompts, max_tokens)
        hf_eager_first32 = agreement([e["tokens"] for e in eager], [e["tokens"] for e in expected], first32)["first_match"]
        if float32_tokens is not None:
            ours = [r["tokens"] for run in (first, second, third) for r in run]
            vs_float32 = {
                "llmserve": agreement(ours, float32_tokens * 3, first32),
                "transformers_sdpa": agreement([e["tokens"] for e in expected], float32_tokens, first32),
                "transformers_eager": agreement([e["tokens"] for e in eager], float32_tokens, first32),
            }
    rows = []
    for run in (first, second, third):
        for got, want in zip(run, expected, strict=True):
            same = matching_prefix(got["tokens"], want["tokens"])
            # Plain-greedy passes carry no logprobs: zip stops at once.
            diffs = [abs(a - b) for a, b in zip(got["logprobs"][:same], want["logprobs"][:same], strict=False)]
            # At the first divergence: how far apart the reference put its token and ours.
            gap = None
            if same < max_tokens:
                ref_row = want["rows"][same]
                gap = (ref_row[want["tokens"][same]] - ref_row[got["tokens"][same]]).item()
            rows.append({"matching_prefix": same, "max_logprob_diff": max(diffs, default=0.0),
                         "reference_gap_at_divergence": gap})
    exact = sum(r["matching_prefix"] == max_tokens for r in rows)
    return {
        "dtype": dtype, "compiled": compiled, "async_scheduling": engine_async, "num_prompts": len(rows),
        "max_tokens": max_tokens,
        "token_identical": exact, "prefix_cache_hit_tokens": hits, "engine_s": round(engine_s, 2),
        "first32_match": sum(r["matching_prefix"] >= first32 for r in rows),
        "hf_eager_vs_sdpa_first32_match": hf_eager_first32,  # of num_prompts / 3 prompts
        # Greedy tokens of this dtype against float32 transformers' (bf16 only): ours and transformers'.
        "vs_float32_reference": vs_float32,
        "reference_tokens": [e["tokens"] for e in expected],
        "max_logprob_diff_over_matching_prefix": max(r["max_logprob_diff"] for r in rows),
        "max_reference_gap_at_divergence": max((r["reference_gap_at_divergence"] for r in rows
                                                if r["reference_gap_at_divergence"] is not None), default=None),
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--num-prompts", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cpu only smoke-tests this script")
    parser.add_argument("--text-prompts", action="store_true",
                        help="prompts from the held-out stdlib text (for a gpu_train_checkpoint.py model), "
                             "not random token ids")
    args = parser.parse_args()
    text = corpus_token_split(args.model_path)[1] if args.text_prompts else None
    fp32 = check(args.model_path, "float32", args.num_prompts, args.max_tokens, device=args.device, text=text)
    bf16 = check(args.model_path, "bfloat16", args.num_prompts, args.max_tokens, fp32["reference_tokens"], args.device,
                 text=text)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    results = {"device": device, "torch": torch.__version__, "model_path": args.model_path,
               "prompts": "held-out stdlib text" if args.text_prompts else "random token ids", "checks": [fp32, bf16]}
    for c in results["checks"]:
        print(f"{c['dtype']} (compiled={c['compiled']}): {c['token_identical']}/{c['num_prompts']} token-identical over {c['max_tokens']} "
              f"tokens, first-32 match {c['first32_match']}/{c['num_prompts']}, max |dlogprob| "
              f"{c['max_logprob_diff_over_matching_prefix']:.4f}, prefix-cache hits {c['prefix_cache_hit_tokens']} "
              f"tokens, largest reference logprob gap where tokens diverged: {c['max_reference_gap_at_divergence']}; "
              f"transformers eager vs sdpa first-32 match: {c['hf_eager_vs_sdpa_first32_match']}/{c['num_prompts'] // 3}")
        for name, row in (c["vs_float32_reference"] or {}).items():
            print(f"  {c['dtype']} {name} against float32 greedy: first-{row['first']} match {row['first_match']}/{row['runs']}, "
                  f"mean matching prefix {row['mean_matching_prefix']} tokens")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0 if fp32["token_identical"] == fp32["num_prompts"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
