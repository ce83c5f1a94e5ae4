"""The GPU fast path on the stock classes of the Llama family (issue 3: "run unchanged").

For Llama, Mistral, Qwen2 (q/k/v biases) and Qwen3 (q/k norms, head_dim 128), a random-weight model
of each class is built offline (the tiny preset's tokenizer) and run through the engine with the
worker defaults of a GPU (paged cache, Triton attention, CUDA graphs of the compiled forward, fused
projections, async scheduling, prefix cache, chunked prefill); its float32 greedy tokens must equal
`model.generate`'s on `benchmarks/gpu_correctness.py`'s mixed batch (three passes, prefix-cache hits).

    python benchmarks/gpu_model_families.py --out families.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_correctness import check  # noqa: E402

from llmserve.tiny import build_tiny_model  # noqa: E402
from llmserve.tiny.families import FAMILIES, build_family_model  # noqa: E402

SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4, "num_attention_heads": 16,
         "num_key_value_heads": 4, "max_position_embeddings": 4096}
SMALL = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}  # CPU smoke runs
PER_FAMILY = {"qwen3": {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=sorted(FAMILIES), choices=sorted(FAMILIES))
    parser.add_argument("--num-prompts", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cpu only smoke-tests this script (small models)")
    args = parser.parse_args()
    on_cuda = args.device.startswith("cuda")
    work = Path(tempfile.mkdtemp(prefix="llmserve-families-"))
    tokenizer_dir = build_tiny_model(work / "tokenizer")
    results: dict = {"device": torch.cuda.get_device_name(0) if on_cuda else args.device,
                     "torch": torch.__version__, "families": {}}
    for name in args.families:
        started = time.perf_counter()
        shape = {**SHAPE, **PER_FAMILY.get(name, {}), **({} if on_cuda else SMALL)}
        model_dir = build_family_model(name, tokenizer_dir, work / name, **shape)
        row = check(str(model_dir), "float32", args.num_prompts, args.max_tokens, device=args.device)
        row.pop("reference_tokens")
        row["seconds"] = round(time.perf_counter() - started, 1)
        results["families"][name] = row
        print(f"{name}: {row['token_identical']}/{row['num_prompts']} token-identical over {row['max_tokens']} "
              f"tokens (float32, compiled={row['compiled']}, async={row['async_scheduling']}), prefix-cache hits "
              f"{row['prefix_cache_hit_tokens']} tokens, max |dlogprob| {row['max_logprob_diff_over_matching_prefix']:.1e}, "
              f"{row['seconds']} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    exact = all(r["token_identical"] == r["num_prompts"] for r in results["families"].values())
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
