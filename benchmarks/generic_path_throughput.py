"""Generic-path throughput on a hybrid (Mamba-2 + attention) model against `model.generate` batch 1.

Builds a random-weight GraniteMoeHybrid (Granite-4-H's class) in memory, then measures output
tokens per second of (a) `model.generate`, one greedy request at a time, and (b) `GenericEngine`
(the model's own forward and cache, request-level batching) with C requests running at once, for
each concurrency C. Every request decodes `--max-tokens` tokens (ignore_eos) after a prompt of
`--prompt-len` tokens; the engine is stepped in the foreground (no HTTP), so the numbers are the
path's own. Prints a markdown table.

    python benchmarks/generic_path_throughput.py --concurrency 1 16 32 --max-tokens 64
    python benchmarks/generic_path_throughput.py --device cuda --dtype bfloat16 --hidden-size 1024 --layers 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout without installing llmserve
    sys.path.insert(0, str(REPO_ROOT))

from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM  # noqa: E402

from llmserve.engine.request import SamplingParams  # noqa: E402
from llmserve.generic.batching import plan_batching  # noqa: E402
from llmserve.generic.engine import GenericEngine  # noqa: E402
from llmserve.generic.forward import ModelForward  # noqa: E402


class _Digits:
    """A stand-in tokenizer (no text is measured here)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def build_model(args: argparse.Namespace) -> Any:
    torch.manual_seed(0)
    pattern = ["linear_attention", "linear_attention", "linear_attention", "attention"]  # Granite-4-H: 1 in 4
    config = GraniteMoeHybridConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden_size // 64, num_key_value_heads=2,
        layer_types=[pattern[i % 4] for i in range(args.layers)], mamba_n_heads=args.hidden_size // 32,
        mamba_d_head=64, mamba_d_state=64, mamba_n_groups=1, mamba_expand=2, num_local_experts=0,
        shared_intermediate_size=2 * args.hidden_size, max_position_embeddings=4096)
    model = GraniteMoeHybridForCausalLM(config).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
    return model


def prompts(args: argparse.Namespace, count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, args.vocab_size, (args.prompt_len,), generator=generator).tolist() for _ in range(count)]


def generate_rate(model: Any, args: argparse.Namespace) -> float:
    """Output tokens/s of `generate`, batch 1, one request after another."""
    requests = prompts(args, args.generate_requests)
    start = time.perf_counter()
    with torch.inference_mode():
        for ids in requests:
            model.generate(torch.tensor([ids], device=args.device), max_new_tokens=args.max_tokens,
                           min_new_tokens=args.max_tokens, do_sample=False, pad_token_id=0)
    return len(requests) * args.max_tokens / (time.perf_counter() - start)


def engine_rate(engine: GenericEngine, args: argparse.Namespace, concurrency: int) -> float:
    """Output tokens/s with `concurrency` requests running (2x that many requests in all, each
    replaced by a new one as it finishes)."""
    requests = prompts(args, 2 * concurrency)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    next_id, num_tokens = 0, 0
    start = time.perf_counter()
    while next_id < len(requests) or engine.has_work:
        while next_id < len(requests) and engine.num_running + len(engine._waiting) < concurrency:
            engine.add(next_id, requests[next_id], params)
            next_id += 1
        num_tokens += sum(len(out.token_ids) for out in engine.step())
    return num_tokens / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--generate-requests", type=int, default=4)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 32])
    args = parser.parse_args(argv)
    model = build_model(args)
    forward = ModelForward(model, torch.device(args.device))
    plan = plan_batching(forward, args.vocab_size, getattr(torch, args.dtype))
    print(f"GraniteMoeHybrid hidden {args.hidden_size}, {args.layers} layers, {args.dtype} on {args.device}; "
          f"threads {torch.get_num_threads()}; batching: {plan.reason}")
    baseline = generate_rate(model, args)
    rows = [("model.generate, batch 1", baseline)]
    for concurrency in args.concurrency:
        engine = GenericEngine(forward, _Digits(), frozenset(), args.vocab_size, 4096, plan.layout,
                               max_num_seqs=concurrency, batched_prefill=plan.batched_prefill)
        rows.append((f"generic path, c={concurrency}", engine_rate(engine, args, concurrency)))
    print("| run | output tok/s | vs generate |\n| --- | ---: | ---: |")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
