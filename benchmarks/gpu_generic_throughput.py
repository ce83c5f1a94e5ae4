"""Throughput of the generic path on a hybrid model (issue 14): c=1 and c=32 against model.generate batch 1.

A random-weight GraniteMoeHybrid (Granite-4-H's class: Mamba-2 layers around attention layers
without positions, experts) from `llmserve.tiny.families` at a bigger shape (hidden 1024, 12
layers by default; the tiny tokenizer's 4,096-token vocabulary) is served by the worker's engine
builder with `engine_path = "generic"` (the model's own forward and cache classes, request-level
batching; probed at load like every worker), bf16 on the GPU. The engine is stepped directly in
this process (no HTTP): C requests run at once, 2C in all, each replaced by the next as it
finishes, every one `--max-tokens` greedy tokens (ignore_eos) after a `--prompt-len`-token prompt.
The baseline is the same model's `generate` (transformers' default attention), batch 1, one
request after another. Output tokens per second of each; whether the c=1 engine's first request
repeats generate's tokens is reported alongside. JSON to --out, a table printed last.

`--device cpu` measures the same on the CPU (float32 unless `--dtype` says otherwise; pick a small
shape), as the CPU table in RESULTS.md does:

    python benchmarks/gpu_generic_throughput.py --out generic.json
    python benchmarks/gpu_generic_throughput.py --device cpu --hidden-size 256 --layers 8 --prompt-len 32 \
        --max-tokens 64 --generate-requests 4 --concurrency 1 16 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from llmserve.config import WorkerConfig  # noqa: E402
from llmserve.engine.builder import build_engine  # noqa: E402
from llmserve.engine.request import SamplingParams  # noqa: E402
from llmserve.tiny import build_tiny_model  # noqa: E402
from llmserve.tiny.families import build_family_model  # noqa: E402

FAMILY = "granitemoehybrid"


def shape(hidden: int, layers: int) -> dict[str, Any]:
    """Granite-4-H's proportions at this width: heads of 64, Mamba-2 heads of 64 over twice the
    width, state 64; the family's layer pattern (one attention layer in four) over `layers`."""
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
            "num_key_value_heads": max(1, hidden // 256), "intermediate_size": hidden // 2,
            "shared_intermediate_size": 2 * hidden, "mamba_n_heads": 2 * hidden // 64, "mamba_d_head": 64,
            "mamba_d_state": 64, "mamba_chunk_size": 256, "max_position_embeddings": 4096}


def prompts(vocab: int, count: int, length: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(100, vocab - 300, (length,), generator=generator).tolist() for _ in range(count)]


def generate_rate(model: Any, requests: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
    """Output tokens/s of `generate`, batch 1, one request after another; and their tokens."""
    outputs = []
    with torch.inference_mode():
        model.generate(torch.tensor([requests[0]], device=model.device), max_new_tokens=4, do_sample=False)  # warm-up
        _sync()
        start = time.perf_counter()
        for ids in requests:
            out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False)
            outputs.append(out[0, len(ids):].tolist())
        _sync()
    return len(requests) * max_tokens / (time.perf_counter() - start), outputs


def engine_rate(engine: Any, requests: list[list[int]], max_tokens: int, concurrency: int,
                first_id: int) -> tuple[float, dict[int, list[int]]]:
    """Output tokens/s with `concurrency` requests running until all of `requests` are done; and
    each request's tokens by its index."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    tokens: dict[int, list[int]] = {}
    next_index, running = 0, 0
    start = time.perf_counter()
    while next_index < len(requests) or engine.has_work:
        while next_index < len(requests) and running < concurrency:
            engine.add(first_id + next_index, requests[next_index], params)
            next_index, running = next_index + 1, running + 1
        for out in engine.step():
            assert out.error is None, out.error
            tokens.setdefault(out.seq_id - first_id, []).extend(out.token_ids)
            running -= out.finish_reason is not None
    _sync()
    return sum(map(len, tokens.values())) / (time.perf_counter() - start), tokens


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matching_prefix(a: list[int], b: list[int]) -> int:
    same = 0
    while same < min(len(a), len(b)) and a[same] == b[same]:
        same += 1
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--generate-requests", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 elsewhere")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu (with a small shape)")
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    work = Path(tempfile.mkdtemp(prefix="llmserve-generic-"))
    model_shape = shape(args.hidden_size, args.layers)
    model_dir = build_family_model(FAMILY, build_tiny_model(work / "tokenizer"), work / FAMILY, **model_shape)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    requests = prompts(vocab, 2 * max(args.concurrency + [args.generate_requests]), args.prompt_len)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    num_parameters = sum(p.numel() for p in model.parameters())
    baseline, generated = generate_rate(model, requests[:args.generate_requests], args.max_tokens)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    config = WorkerConfig(model_path=str(model_dir), device=args.device, dtype=args.dtype, engine_path="generic",
                          max_num_seqs=max(args.concurrency), max_num_batched_tokens=8192)
    started = time.perf_counter()
    engine: Any = build_engine(config, 0)
    build_s = time.perf_counter() - started
    engine_rate(engine, requests[:1], 4, 1, first_id=10**6)  # warm-up
    rows: list[dict[str, Any]] = [{"run": "model.generate, batch 1", "output_tokens_per_s": baseline,
                                   "requests": args.generate_requests}]
    for index, concurrency in enumerate(args.concurrency):
        rate, tokens = engine_rate(engine, requests[:2 * concurrency], args.max_tokens, concurrency,
                                   first_id=(index + 1) * 10**4)
        row = {"run": f"generic path, c={concurrency}", "output_tokens_per_s": rate, "requests": 2 * concurrency}
        if concurrency == 1:  # the same prompt alone, through the same model's forward and cache
            row["first_request_matching_prefix_with_generate"] = matching_prefix(tokens[0], generated[0])
        rows.append(row)
    for row in rows:
        row["vs_generate"] = row["output_tokens_per_s"] / baseline
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    results = {"device": device, "torch": torch.__version__, "family": FAMILY, "shape": model_shape,
               "num_parameters": num_parameters, "vocab_size": vocab, "dtype": args.dtype,
               "prompt_len": args.prompt_len, "max_tokens": args.max_tokens, "measured": "direct engine stepping, no HTTP",
               "torch_threads": torch.get_num_threads(),
               "path": engine.serving_path.name, "path_reason": engine.serving_path.reason,
               "batched_decoding": engine.layout is not None, "engine_build_s": round(build_s, 1), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(f"GraniteMoeHybrid {num_parameters / 1e6:.0f}M parameters ({model_shape['hidden_size']} wide, "
          f"{model_shape['num_hidden_layers']} layers), {args.dtype} on {device} ({results['torch_threads']} torch "
          f"threads); {results['path']} path "
          f"({results['path_reason']}); batched decoding: {results['batched_decoding']}")
    print("| run | output tok/s | vs generate | requests |\n| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['run']} | {row['output_tokens_per_s']:.1f} | {row['vs_generate']:.2f}x | {row['requests']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
