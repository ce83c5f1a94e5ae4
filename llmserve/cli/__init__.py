"""Command line: one module per subcommand under llmserve/cli/, each with `register(subparsers)`.

A subcommand module only parses arguments and calls into the package; it holds no logic.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

# Subcommand modules, each exposing `register(subparsers) -> None` that sets `func` on its parser.
_SUBCOMMANDS = ("run", "tiny_model", "bench", "chat", "test_message")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="llmserve", description="Serve Hugging Face language models behind an OpenAI-compatible API.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _SUBCOMMANDS:
        importlib.import_module(f"llmserve.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llmserve` command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
