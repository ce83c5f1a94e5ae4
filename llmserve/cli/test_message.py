"""`llmserve test-message --model-name NAME [--base-url URL] [--api-key K]` (parsing only)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `test-message` subcommand."""
    parser = subparsers.add_parser(
        "test-message", help="check that a running server answers a chat message",
        description="List the served models, send one chat message, stream the reply, print TTFT and "
                    "tokens/s; exit 1 with the reason when something is wrong.",
    )
    parser.add_argument("--model-name", required=True, help="the model to test, as the server names it")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="server URL including /v1")
    parser.add_argument("--api-key", help="sent as Authorization: Bearer KEY")
    parser.add_argument("--ca-cert", metavar="FILE",
                        help="PEM file of the CA of an https server (default: system CAs, or SSL_CERT_FILE)")
    parser.add_argument("--message", help="the message to send (default: ask for a story)")
    parser.add_argument("--max-tokens", type=int, default=128, help="longest reply (default: 128)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the check; 0 when the model answered."""
    from llmserve.test_message import DEFAULT_MESSAGE, MessageCheckError, check_message

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        result = check_message(args.base_url, args.model_name, args.api_key, args.message or DEFAULT_MESSAGE,
                               args.max_tokens, write, ca_cert=args.ca_cert)
    except MessageCheckError as exc:
        print(f"llmserve test-message: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
