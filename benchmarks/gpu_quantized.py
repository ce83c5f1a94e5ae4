"""Pre-quantized FP8 checkpoints on the GPU: do they stay FP8, take the fast path, and agree with
transformers' own forward? (issue 14 part 5; run on a CUDA machine with FP8 kernels, e.g. an H200)

From a full-precision checkpoint (default: the 1B-shape tiny model, built offline) it writes a
fine-grained FP8 copy (128x128 tiles) and a compressed-tensors FP8_DYNAMIC copy
(llmserve/tiny/quantized.py), then for each: builds the worker's engine as `llmserve run` would
(bf16, CUDA graphs, the load-time probe), records the path chosen and why, whether the linear
layers stayed FP8 on the device, the greedy tokens of a batch of prompts against the same
checkpoint's `model.generate` (loaded by transformers alone), and output tokens/s of that batch.
On a CPU (--device cpu, the smoke mode) transformers dequantizes fine-grained FP8 on load.

    python benchmarks/gpu_quantized.py --out results/quantized.json
    python benchmarks/gpu_quantized.py --device cpu --tiny --num-prompts 2 --max-tokens 4 --out /tmp/q.json  # smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import random
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
from llmserve.quantization import describe_quantized  # noqa: E402
from llmserve.tiny import build_tiny_model  # noqa: E402
from llmserve.tiny.quantized import write_compressed_fp8_checkpoint, write_fp8_checkpoint  # noqa: E402


def make_prompts(vocab: int, num: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab - 300) for _ in range(rng.choice([9, 40, 130, 300]))] for _ in range(num)]


def serve(engine: Any, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], float]:
    """Greedy tokens of every prompt, all added at once; and the output tokens per second."""
    tokens: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    started = time.perf_counter()
    for seq_id, ids in enumerate(prompts):
        engine.add(seq_id, ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
    while engine.has_work:
        for out in engine.step():
            if out.error is not None:
                raise RuntimeError(out.error)
            tokens[out.seq_id] += out.token_ids
    elapsed = time.perf_counter() - started
    return list(tokens.values()), sum(map(len, tokens.values())) / elapsed


def reference(model_dir: Path, prompts: list[list[int]], max_tokens: int, device: str, dtype: torch.dtype) -> list[list[int]]:
    # Straight onto the GPU, as a worker loads it: loaded on the CPU and moved, compressed-tensors'
    # offloading keeps sending the activations back to the CPU.
    place = {"device_map": {"": device}} if device.startswith("cuda") else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **place).to(device).eval()
    outputs = []
    with torch.inference_mode():
        for ids in prompts:
            out = model.generate(torch.tensor([ids], device=device), max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False)
            outputs.append(out[0, len(ids):].tolist())
    del model
    return outputs


def check(name: str, model_dir: Path, args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    # The context is capped below the cache: the 1B preset declares 131,072 positions, more than the
    # cache holds, and a worker refuses a context its cache cannot hold (run 26's compressed-tensors row).
    config = WorkerConfig(model_path=str(model_dir), device=args.device, dtype=args.dtype,
                          kv_cache_tokens=args.kv_cache_tokens, max_model_len=args.max_model_len,
                          max_num_seqs=max(args.num_prompts, 1))
    row: dict[str, Any] = {"checkpoint": name}
    try:
        engine = build_engine(config, 0)
    except Exception as exc:  # a refusal is a result too: recorded with its one line
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    model = engine.runner.model if hasattr(engine, "runner") else getattr(engine, "model", None)
    row["path"] = engine.serving_path.name
    row["path_reason"] = engine.serving_path.reason
    if model is not None:
        row["weights"] = describe_quantized("fp8" if name == "fine-grained-fp8" else "compressed-tensors", model)
        row["weight_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    prompts = make_prompts(args.vocab, args.num_prompts, args.seed)
    ours, _ = serve(engine, prompts, args.max_tokens)
    serve(engine, prompts, args.max_tokens)  # warm graphs, then timed again
    _, row["output_tokens_per_s"] = serve(engine, prompts, args.max_tokens)
    del engine, model
    gc.collect()
    theirs = reference(model_dir, prompts, args.max_tokens, args.device, dtype)
    row["token_identical"] = sum(a == b for a, b in zip(ours, theirs, strict=True))
    row["num_prompts"] = len(prompts)
    row["first_divergence"] = [next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
                               for a, b in zip(ours, theirs, strict=True)]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", help="full-precision source checkpoint (default: the 1B-shape tiny model)")
    parser.add_argument("--tiny", action="store_true", help="the tiny preset as the source (CPU smoke test)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--block", type=int, default=128, help="fine-grained FP8 tile size")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--kv-cache-tokens", type=int, default=65536)
    parser.add_argument("--max-model-len", type=int, default=4096,
                        help="the served context (at most --kv-cache-tokens; the prompts need ~330)")
    parser.add_argument("--formats", nargs="+", default=["compressed-tensors-fp8", "fine-grained-fp8"],
                        choices=["compressed-tensors-fp8", "fine-grained-fp8"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not 0 < args.max_model_len <= args.kv_cache_tokens:
        parser.error("--max-model-len: between 1 and --kv-cache-tokens")
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        preset = "tiny" if args.tiny else "llama-3.2-1b"
        source = Path(args.model_path) if args.model_path else build_tiny_model(work / "source", seed=0,
                                                                               preset=preset)
        args.vocab = json.loads((source / "config.json").read_text())["vocab_size"]
        writers = {
            "compressed-tensors-fp8": lambda: write_compressed_fp8_checkpoint(source, work / "compressed"),
            "fine-grained-fp8": lambda: write_fp8_checkpoint(source, work / "fp8", block=args.block),
        }
        checkpoints = {name: writers[name]() for name in args.formats}
        rows = [check(name, folder, args, dtype) for name, folder in checkpoints.items()]
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "dtype": args.dtype, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
