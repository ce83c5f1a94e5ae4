"""`llmserve chat`: chat in the terminal with a model loaded in-process or served elsewhere (parsing only)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llmserve.chat.ui import STYLES
from llmserve.config import DTYPES, ENGINE_PATHS

_EPILOG = (
    "commands: !!exit (or an empty line / Ctrl-D), !!reset, !!remove, !!regen, !!save FILE, !!load FILE, "
    "!!help; Ctrl-C stops the answer being written"
)


def register(subparsers: Any) -> None:
    """Add the `chat` subcommand."""
    parser = subparsers.add_parser(
        "chat", help="chat with a model in the terminal (in-process, or with a running server)",
        description="Chat in the terminal with a model loaded in this process (--model-path) or served by "
                    "an OpenAI-compatible server (--base-url), answers streaming as they are written.",
        epilog=_EPILOG,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model-path", help="model folder or hub id to load in this process")
    target.add_argument("--base-url", help="OpenAI-compatible server to chat with, including /v1")
    remote = parser.add_argument_group("remote (with --base-url)")
    remote.add_argument("--model", help="model name on the server (default: the first it lists)")
    remote.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    remote.add_argument("--ca-cert", metavar="FILE",
                        help="PEM file of the CA of an https server (default: system CAs, or SSL_CERT_FILE)")
    local = parser.add_argument_group("loading (with --model-path)")
    local.add_argument("--device", help='"cpu", "cuda", "cuda:N" or "mps" (default: the best present)')
    local.add_argument("--dtype", choices=DTYPES, help="weight dtype (default: auto)")
    local.add_argument("--num-gpus", type=int, help="spread the model over this many GPUs")
    local.add_argument("--max-gpu-memory", help='most memory per GPU for weights, e.g. "20GiB"')
    local.add_argument("--load-8bit", action="store_true", help="8-bit weights (bitsandbytes)")
    local.add_argument("--load-4bit", action="store_true", help="4-bit weights (bitsandbytes)")
    local.add_argument("--cpu-offloading", action="store_true", help="weights that do not fit the GPU go to CPU")
    local.add_argument("--chat-template",
                       help="template: a built-in name (vicuna_v1.1, llama-2, alpaca, chatml, chatglm2, zero_shot), "
                            "a Jinja string or a file (default: the tokenizer's)")
    local.add_argument("--tokenizer-path", help="tokenizer folder or hub id, when not the model's")
    local.add_argument("--revision", help="hub revision (branch, tag or commit) of a hub id's cached snapshot")
    local.add_argument("--max-model-len", type=int, help="context length in tokens (default: the model's)")
    local.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint")
    local.add_argument("--engine-path", choices=ENGINE_PATHS,
                       help="auto (fast unless the load-time probe says otherwise), fast or generic (default: auto)")
    gen = parser.add_argument_group("generation")
    gen.add_argument("--temperature", type=float, default=0.7, help="0 is greedy (default: 0.7)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    gen.add_argument("--max-new-tokens", type=int, default=512, help="longest answer (default: 512)")
    gen.add_argument("--seed", type=int, help="sampling seed, for reproducible sessions")
    conv = parser.add_argument_group("conversation")
    conv.add_argument("--system", help="system message before the conversation")
    conv.add_argument("--no-history", action="store_true", help="answer each message on its own")
    conv.add_argument("--debug", action="store_true",
                      help="after each answer print template, prompt, output and speed (token/s)")
    conv.add_argument("--style", choices=STYLES,
                      help="simple text or rendered markdown (default: rich on a terminal)")
    conv.add_argument("--multiline", action="store_true", help="rich style: Enter adds a line, Esc+Enter sends")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the flags and chat."""
    from llmserve.chat.app import run_chat
    from llmserve.chat.backends import ChatError
    from llmserve.chat.options import options_from_args

    try:
        options = options_from_args(args)
    except ChatError as exc:
        print(f"llmserve chat: {exc}", file=sys.stderr)
        return 2
    return run_chat(options)
