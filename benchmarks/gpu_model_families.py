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
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_correctness import check  # noqa: E402

from llmserve.tiny import build_tiny_model  # noqa: E402

SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4, "num_attention_heads": 16,
         "num_key_value_heads": 4, "max_position_embeddings": 4096}
FAMILIES: dict[str, tuple[type, type[PreTrainedModel], dict]] = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128}),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def build_family(name: str, tokenizer_dir: Path, out: Path, small: bool) -> Path:
    """A random-weight model of the family's stock class, with the tiny preset's tokenizer."""
    config_cls, model_cls, extra = FAMILIES[name]
    base = json.loads((tokenizer_dir / "config.json").read_text())
    shape = {**SHAPE, **extra}
    if small:  # CPU smoke runs
        shape.update(hidden_size=128, intermediate_size=256, num_hidden_layers=2)
    config = config_cls(vocab_size=base["vocab_size"], bos_token_id=base["bos_token_id"],
                        eos_token_id=base["eos_token_id"], pad_token_id=base.get("pad_token_id"), **shape)
    torch.manual_seed(0)
    model = model_cls(config)
    with torch.no_grad():  # a wider embedding than HF's init, so greedy outputs vary with the prompt
        model.get_input_embeddings().weight.normal_(0, 0.1)
        for param_name, param in model.named_parameters():
            if param_name.endswith(".bias"):  # Qwen2's q/k/v biases start at zero: make them count
                param.normal_(0, 0.1)
            elif "q_norm" in param_name or "k_norm" in param_name:  # Qwen3's q/k norms start at one
                param.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    for file in TOKENIZER_FILES:
        if (tokenizer_dir / file).exists():
            (out / file).write_bytes((tokenizer_dir / file).read_bytes())
    return out


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
        model_dir = build_family(name, tokenizer_dir, work / name, small=not on_cuda)
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
