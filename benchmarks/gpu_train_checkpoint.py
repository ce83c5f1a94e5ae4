"""Train a tiny-model checkpoint for a few minutes, so correctness can be checked on trained weights.

A random-weight model puts near-equal logits on many tokens, so greedy order in bf16 flips on
rounding within a few tokens for every implementation (gpu_correctness.py measures it). Trained
models have peaked distributions; no trained checkpoint can be downloaded here, so this script
trains one: it starts from a `llmserve tiny-model` directory (any preset, the Llama-3.2-1B shape
included) and trains it as a causal LM on the same stdlib corpus its tokenizer learned from, for a
wall-clock budget, in bf16 autocast with float32 master weights (AdamW, warmup then cosine decay).
The last files of the corpus are held out: their loss is reported and gpu_correctness.py's
`--text-prompts` draws its prompts from them. The result is saved like a Hub checkpoint (bf16
safetensors, the tokenizer files copied).

    python benchmarks/gpu_train_checkpoint.py --model-path /tmp/llama-1b --save-dir /tmp/llama-1b-trained --seconds 240
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmserve.tiny.corpus import read_corpus  # noqa: E402

CORPUS_BYTES = 16_000_000  # the whole filtered stdlib, as the llama-3.2-1b preset's tokenizer saw it
HELD_OUT_FILES = 20  # the corpus's last files (sorted by path) are never trained on


def corpus_token_split(model_path: str, corpus_bytes: int = CORPUS_BYTES) -> tuple[list[int], list[int]]:
    """The stdlib corpus tokenized by the model's tokenizer: (training tokens, held-out tokens).

    Files are joined in their sorted order with the end-of-text token between them; the last
    `HELD_OUT_FILES` files form the held-out part.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts = read_corpus(corpus_bytes)
    if len(texts) <= HELD_OUT_FILES:
        raise ValueError(f"the corpus has {len(texts)} files: too few to hold {HELD_OUT_FILES} out")
    sep = [tokenizer.eos_token_id]
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    train = [tok for ids in encoded[:-HELD_OUT_FILES] for tok in (*ids, *sep)]
    held_out = [tok for ids in encoded[-HELD_OUT_FILES:] for tok in (*ids, *sep)]
    return train, held_out


def learning_rate(peak: float, warmup_steps: int, step: int, progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to a tenth of `peak` as time runs out."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def sample_batch(tokens: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """`batch` random windows of `seq_len` tokens."""
    starts = torch.randint(0, tokens.numel() - seq_len, (batch,), generator=generator)
    return torch.stack([tokens[s:s + seq_len] for s in starts.tolist()])


def autocast(device: str) -> torch.autocast:
    """bf16 autocast on a GPU (float32 master weights stay as they are); off on the CPU."""
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu")


@torch.no_grad()
def held_out_loss(model, tokens: torch.Tensor, seq_len: int, device: str, max_windows: int = 32) -> float:
    """Mean next-token loss over consecutive held-out windows."""
    model.eval()
    windows = tokens[: (tokens.numel() // seq_len) * seq_len].view(-1, seq_len)[:max_windows]
    losses = []
    for row in windows:
        with autocast(device):
            ids = row.unsqueeze(0).to(device)
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    model.train()
    return sum(losses) / len(losses)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    train_ids, held_ids = corpus_token_split(args.model_path)
    train_tokens = torch.tensor(train_ids, dtype=torch.long)
    held_tokens = torch.tensor(held_ids, dtype=torch.long)
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32, attn_implementation="sdpa")
    model.to(args.device).train()
    on_gpu = args.device.startswith("cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=on_gpu)
    generator = torch.Generator().manual_seed(args.seed)
    initial_loss = held_out_loss(model, held_tokens, args.seq_len, args.device)
    curve = []
    step = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < args.seconds:
        lr = learning_rate(args.lr, args.warmup_steps, step, elapsed / args.seconds)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = sample_batch(train_tokens, args.batch_size, args.seq_len, generator).to(args.device)
        with autocast(args.device):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % args.log_every == 0:
            curve.append({"step": step, "seconds": round(time.perf_counter() - started, 1),
                          "lr": lr, "train_loss": round(loss.item(), 4)})
            print(f"step {step:5d}  {curve[-1]['seconds']:7.1f} s  lr {lr:.2e}  loss {curve[-1]['train_loss']:.3f}",
                  flush=True)
    if on_gpu:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - started
    final_loss = held_out_loss(model, held_tokens, args.seq_len, args.device)
    save(model, args.model_path, args.save_dir)
    return {
        "device": torch.cuda.get_device_name(0) if on_gpu else args.device,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens_in_corpus": train_tokens.numel(), "held_out_tokens": held_tokens.numel(),
        "steps": step, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "tokens_seen": step * args.batch_size * args.seq_len, "train_s": round(train_s, 1),
        "tokens_per_s": round(step * args.batch_size * args.seq_len / train_s),
        "held_out_loss_before": round(initial_loss, 4), "held_out_loss_after": round(final_loss, 4),
        "curve": curve,
    }


def save(model, source: str, out: Path) -> None:
    """The trained weights in bf16 next to copies of the source's tokenizer and generation files."""
    out.mkdir(parents=True, exist_ok=True)
    for path in Path(source).iterdir():
        if path.is_file() and path.suffix != ".safetensors" and path.name != "model.safetensors.index.json":
            shutil.copy2(path, out / path.name)
    model.to(torch.bfloat16).save_pretrained(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True, help="a `llmserve tiny-model` directory")
    parser.add_argument("--save-dir", type=Path, required=True, help="directory for the trained checkpoint")
    parser.add_argument("--seconds", type=float, default=240.0, help="training wall-clock budget")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", help="cpu only smoke-tests this script")
    parser.add_argument("--out", type=Path, default=None, help="write the loss curve and totals here (JSON)")
    args = parser.parse_args()
    results = train(args)
    print(f"{results['steps']} steps, {results['tokens_seen']:,} tokens in {results['train_s']} s "
          f"({results['tokens_per_s']:,} tok/s); held-out loss {results['held_out_loss_before']} -> "
          f"{results['held_out_loss_after']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
