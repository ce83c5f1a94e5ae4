"""Reference throughputs of plain transformers on the same model and card (issue 3's baselines).

- `model.generate`, batch 1: a 512-token prompt, 256 new tokens (eager, DynamicCache);
- transformers' continuous batching (`generate_batch`, paged attention through SDPA, offline, no
  HTTP) on the throughput workload: N requests with prompts of 64-512 tokens and 256 new tokens.

    python benchmarks/gpu_references.py --model-path /tmp/llama1b --num-requests 512 --out refs.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig


def generate_batch1(model, vocab: int, prompt_len: int, new_tokens: int) -> dict:
    ids = torch.randint(100, vocab - 300, (1, prompt_len), device=model.device)
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"prompt_len": prompt_len, "new_tokens": new_tokens, "seconds": elapsed,
            "tokens_per_s": new_tokens / elapsed}


def continuous_batching(model, vocab: int, num_requests: int, new_tokens: int, seed: int) -> dict:
    rng = random.Random(seed)
    inputs = [[rng.randrange(100, vocab - 300) for _ in range(rng.randint(64, 512))] for _ in range(num_requests)]
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=-1, use_cuda_graph=False)
    model.set_attn_implementation("paged|sdpa")
    model.generate_batch(inputs=inputs[:8], generation_config=config)  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    results = model.generate_batch(inputs=inputs, generation_config=config)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    generated = sum(len(r.generated_tokens) for r in results.values())
    return {"num_requests": num_requests, "new_tokens": new_tokens, "seconds": elapsed,
            "output_tokens": generated, "output_tokens_per_s": generated / elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--num-requests", type=int, default=512)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.bfloat16).cuda().eval()
    vocab = model.config.vocab_size
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "generate_batch1": generate_batch1(model, vocab, 512, 256)}
    print(f"model.generate batch 1: {results['generate_batch1']['tokens_per_s']:.1f} tok/s", flush=True)
    results["generate_batch"] = continuous_batching(model, vocab, args.num_requests, 256, seed=0)
    print(f"generate_batch, {args.num_requests} requests: "
          f"{results['generate_batch']['output_tokens_per_s']:.0f} output tok/s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
