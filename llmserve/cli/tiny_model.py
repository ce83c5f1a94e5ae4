"""`llmserve tiny-model OUT_DIR`: build a random-weight model and tokenizer, fully offline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Preset names only; the builder (torch, transformers) is imported when the command runs.
PRESET_NAMES = ("llama-3.2-1b", "qwen2-0.5b", "tiny")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the `tiny-model` subcommand."""
    parser = subparsers.add_parser(
        "tiny-model",
        help="build a random-weight Llama or Qwen2 model with a real BPE tokenizer (offline, deterministic)",
        description=__doc__,
    )
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", type=Path, help="directory to write (created if missing)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight seed; same seed, same bytes (default: 0)")
    parser.add_argument(
        "--preset", choices=PRESET_NAMES, default="tiny", help="model shape (default: tiny)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the model and print its path and parameter count."""
    from llmserve.tiny import build_tiny_model, count_parameters

    out_dir = build_tiny_model(args.out_dir, seed=args.seed, preset=args.preset)
    print(f"{out_dir} {count_parameters(out_dir):,} parameters")
    return 0
