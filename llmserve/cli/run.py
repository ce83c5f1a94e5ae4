"""`llmserve run CONFIG.toml [--host H] [--port P] [--log-level L]`."""

from __future__ import annotations

import argparse
import logging
import sys

from llmserve.errors import ConfigError

LOG_LEVELS = ("debug", "info", "warning", "error")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="serve the models of a config file")
    parser.add_argument("config", help="path to the TOML config file")
    parser.add_argument("--host", help="address to bind (overrides [server].host)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides [server].port)")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from llmserve.server import serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return serve(args.config, host=args.host, port=args.port, log_level=args.log_level)
    except ConfigError as exc:
        print(f"llmserve: {exc}", file=sys.stderr)
        return 2
