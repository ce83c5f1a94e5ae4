"""Typed options of one benchmark run, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Endpoint = Literal["chat", "completions"]

# URL path under the base URL for each endpoint kind.
ENDPOINT_PATHS: dict[str, str] = {"chat": "/chat/completions", "completions": "/completions"}


class BenchError(RuntimeError):
    """A run that cannot start: bad options, unreachable server, no model to target."""


@dataclass(frozen=True)
class BenchOptions:
    """Everything that defines a benchmark run; mirrors the `llmserve bench` flags."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Server root including `/v1`; endpoint paths are appended to it."""
    model: str | None = None
    """Model id to request; None asks `GET /models` and takes the first one."""
    endpoint: Endpoint = "chat"
    """`chat` posts to /chat/completions, `completions` to /completions."""
    num_prompts: int = 100
    """How many requests to send in total (>= 1)."""
    input_len: int = 128
    """Prompt length in tokens (approximate without a tokenizer; >= 1)."""
    output_len: int = 128
    """Tokens to generate per request, sent as `max_tokens` with `ignore_eos` (>= 1)."""
    ignore_eos: bool = True
    """Send `ignore_eos` (exact lengths); False for servers that refuse unknown fields: an answer may
    then stop early, and its length is read from `usage`."""
    range_ratio: float = 0.0
    """Lengths are drawn uniformly from [len*(1-r), len*(1+r)]; 0 <= r < 1."""
    seed: int = 0
    """Seed of prompt contents, lengths and arrival gaps."""
    tokenizer: str | None = None
    """Local Hugging Face tokenizer folder; None builds prompts from random words."""
    max_concurrency: int | None = None
    """Most requests in flight at once; None means no limit."""
    request_rate: float = math.inf
    """Mean arrivals per second (Poisson); inf sends everything at once."""
    temperature: float = 0.0
    """Sampling temperature sent with every request (>= 0)."""
    logprobs: int | None = None
    """Ask for the sampled tokens' logprobs and this many top alternatives (>= 0); None asks none."""
    api_key: str | None = field(default=None, repr=False)
    """Sent as `Authorization: Bearer <key>` when set; never written to reports."""
    ca_cert: str | None = None
    """PEM file of the CA that signed an https server's certificate; None trusts the system's CAs
    (or SSL_CERT_FILE / SSL_CERT_DIR when set)."""
    request_timeout_s: float = 3600.0
    """Per-request timeout (connect, read, write, pool) in seconds (> 0)."""
    show_progress: bool = True
    """Draw a progress bar on stderr (only when stderr is a terminal)."""
    json_schema: dict[str, Any] | None = None
    """A JSON schema every answer must follow (chat `response_format` json_schema, strict); None asks
    free text. Needs `ignore_eos` off: the schema's end is the answer's end."""

    def __post_init__(self) -> None:
        for name in ("num_prompts", "input_len", "output_len"):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        _require(0.0 <= self.range_ratio < 1.0, "range_ratio", "must be in [0, 1)")
        _require(self.endpoint in ENDPOINT_PATHS, "endpoint", f"must be one of {sorted(ENDPOINT_PATHS)}")
        _require(self.max_concurrency is None or self.max_concurrency >= 1, "max_concurrency", "must be >= 1")
        _require(self.request_rate > 0, "request_rate", "must be > 0 (use inf for all at once)")
        _require(self.temperature >= 0, "temperature", "must be >= 0")
        _require(self.logprobs is None or self.logprobs >= 0, "logprobs", "must be >= 0")
        _require(self.request_timeout_s > 0, "request_timeout_s", "must be > 0")
        _require(self.json_schema is None or isinstance(self.json_schema, dict), "json_schema", "must be an object")
        _require(self.json_schema is None or self.endpoint == "chat", "json_schema", "needs the chat endpoint")
        _require(self.json_schema is None or not self.ignore_eos, "json_schema",
                 "needs ignore_eos off (--no-ignore-eos): the schema's end is the answer's end")
        _require(self.base_url.startswith(("http://", "https://")), "base_url", "must start with http(s)://")
        _require(self.ca_cert is None or Path(self.ca_cert).expanduser().is_file(), "ca_cert",
                 f"no such file: {self.ca_cert}")

    @property
    def url(self) -> str:
        """Full URL of the endpoint under test."""
        return self.base_url.rstrip("/") + ENDPOINT_PATHS[self.endpoint]


def _require(is_ok: bool, name: str, rule: str) -> None:
    """Raise BenchError naming the field when a bound is broken."""
    if not is_ok:
        raise BenchError(f"bench option {name}: {rule}")
