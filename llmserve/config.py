"""Typed configuration: `[server]`, `[[workers]]` and `[ui]` tables of a TOML file.

Every section is a frozen dataclass whose fields carry a default and a one-line docstring
(the string literal under it). `load_config` parses TOML, rejects unknown keys, checks each
value's type and bounds, and raises `ConfigError` naming the key path and the bad value, e.g.
`workers[1].device = "gpu": expected "cpu", "cuda", "cuda:N" or "mps"`.
`config.example.toml` mirrors every field; tests/test_config.py keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmserve.errors import ConfigError
from llmserve.reasoning import REASONING_PARSERS
from llmserve.tool_parsers import TOOL_PARSERS

DISPATCH_POLICIES = ("shortest_queue", "lottery")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TASKS = ("auto", "generate", "embed")
ENGINE_PATHS = ("auto", "fast", "generic")
CERT_REQS = ("none", "optional", "required")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_HEADER_RE = re.compile(r"^(\*|[A-Za-z0-9!#$%&'*+.^_`|~-]+)$")
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(GiB|MiB|GB|MB)$")
_MEMORY_UNITS = {"GiB": 1024**3, "MiB": 1024**2, "GB": 10**9, "MB": 10**6}


@dataclass(frozen=True)
class ServerConfig:
    """The `[server]` table: where to listen and who may call."""

    host: str = "127.0.0.1"
    """Address to bind; loopback unless you mean to expose the server."""
    port: int = 8000
    """TCP port to listen on."""
    api_keys: tuple[str, ...] = ()
    """Accepted `Authorization: Bearer` keys; empty means no authentication."""
    api_keys_file: str = ""
    """A file of more keys, one a line (blank lines and `#` comments skipped), read at start-up:
    keys kept out of the config file, e.g. a mounted Kubernetes Secret."""
    allowed_origins: tuple[str, ...] = ()
    """Origins allowed by CORS; empty turns CORS off ("*" allows every origin)."""
    allow_credentials: bool = False
    """CORS: let browsers send cookies and Authorization to the allowed origins (never with "*")."""
    allowed_methods: tuple[str, ...] = ("GET", "POST", "OPTIONS")
    """CORS: methods a cross-origin request may use ("*": any)."""
    allowed_headers: tuple[str, ...] = ("Authorization", "Content-Type")
    """CORS: request headers a cross-origin request may send ("*": any)."""
    ssl_certfile: str = ""
    """PEM certificate (chain) of the server; with ssl_keyfile the port speaks HTTPS only."""
    ssl_keyfile: str = ""
    """PEM private key of ssl_certfile."""
    ssl_keyfile_password: str = ""
    """Password of an encrypted ssl_keyfile."""
    ssl_ca_certs: str = ""
    """PEM bundle of the CAs whose client certificates are accepted (needs ssl_cert_reqs)."""
    ssl_cert_reqs: str = "none"
    """Client certificates: "none" (not asked for), "optional" (verified when sent) or "required"."""
    dispatch: str = "shortest_queue"
    """How a worker is picked among those serving a model: "shortest_queue" or "lottery"."""
    max_request_bytes: int = 4_194_304
    """Largest accepted request body in bytes (413 beyond)."""
    max_n: int = 16
    """Largest `n` (choices per request) accepted."""
    max_stop_sequences: int = 16
    """Largest number of stop strings per request."""
    max_stop_length: int = 256
    """Longest stop string, in characters."""
    max_messages: int = 1024
    """Largest number of chat messages per request."""
    max_logprobs: int = 20
    """Largest `top_logprobs` (chat) / `logprobs` (completions) accepted."""
    shutdown_timeout: float = 30.0
    """Seconds in-flight requests may take to finish after SIGTERM before they are aborted."""
    drain_grace: float = 5.0
    """Seconds after SIGTERM during which /ready answers 503 while new requests are still served, so
    a load balancer sees the instance leave before its listener closes: longer than the balancer's
    health-check interval (Kubernetes: the readiness probe's period). SIGINT skips it."""
    metrics_require_key: bool = False
    """With api_keys set, require the key on /metrics too (it is open otherwise)."""
    log_requests: bool = False
    """Log each request's prompt (off: only ids, counts and timings are logged)."""
    max_request_line_bytes: int = 8192
    """Longest request line (method, target, version) in bytes (414 beyond)."""
    max_header_bytes: int = 32768
    """Largest request header block in bytes (431 beyond)."""
    max_headers: int = 100
    """Most header fields per request (431 beyond)."""
    header_timeout_s: float = 10.0
    """Seconds a request's line and headers may take to arrive (408 and the connection closed beyond)."""
    body_timeout_s: float = 60.0
    """Seconds a request body may take to arrive once its headers are in (408 and the connection closed beyond)."""
    keep_alive_timeout_s: float = 5.0
    """Seconds an idle keep-alive connection stays open between requests."""
    max_connections: int = 1000
    """Most open connections; one more is answered 503 and closed (keep it below `ulimit -n`)."""

    def validate(self) -> None:
        _check(1 <= self.port <= 65535, "server.port", self.port, "expected 1..65535")
        _check(self.dispatch in DISPATCH_POLICIES, "server.dispatch", self.dispatch,
               f"expected one of {', '.join(DISPATCH_POLICIES)}")
        for i, key in enumerate(self.api_keys):
            _check(len(key) >= 8, f"server.api_keys[{i}]", "***", "keys must be at least 8 characters")
        _check(self.max_request_bytes >= 1024, "server.max_request_bytes", self.max_request_bytes,
               "expected at least 1024")
        _check(self.shutdown_timeout >= 0, "server.shutdown_timeout", self.shutdown_timeout, "expected >= 0")
        _check(0 <= self.drain_grace <= 3600, "server.drain_grace", self.drain_grace, "expected 0..3600 seconds")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
            value = getattr(self, name)
            _check(value > 0, f"server.{name}", value, "expected a positive number of seconds")
        for name, least in (("max_request_line_bytes", 256), ("max_header_bytes", 1024), ("max_headers", 8),
                            ("max_connections", 1)):
            value = getattr(self, name)
            _check(value >= least, f"server.{name}", value, f"expected at least {least}")
        for name in ("max_n", "max_stop_sequences", "max_stop_length", "max_messages", "max_logprobs"):
            value = getattr(self, name)
            _check(value >= 1, f"server.{name}", value, "expected at least 1")
        self._validate_tls()
        self._validate_cors()

    def _validate_tls(self) -> None:
        """TLS settings that contradict each other; the files themselves are checked by llmserve.tls."""
        _check(self.ssl_cert_reqs in CERT_REQS, "server.ssl_cert_reqs", self.ssl_cert_reqs,
               f"expected one of {', '.join(CERT_REQS)}")
        _check(bool(self.ssl_keyfile) or not self.ssl_certfile, "server.ssl_keyfile", self.ssl_keyfile,
               "ssl_certfile is set: HTTPS needs the certificate's private key too")
        _check(bool(self.ssl_certfile) or not self.ssl_keyfile, "server.ssl_certfile", self.ssl_certfile,
               "ssl_keyfile is set: HTTPS needs the certificate too")
        _check(bool(self.ssl_keyfile) or not self.ssl_keyfile_password, "server.ssl_keyfile_password", "***",
               "set without ssl_keyfile")
        _check(bool(self.ssl_certfile) or not self.ssl_ca_certs, "server.ssl_ca_certs", self.ssl_ca_certs,
               "client certificates need HTTPS: set ssl_certfile and ssl_keyfile")
        _check(bool(self.ssl_ca_certs) or self.ssl_cert_reqs == "none", "server.ssl_cert_reqs",
               self.ssl_cert_reqs, "needs ssl_ca_certs (the CAs that sign client certificates)")
        _check(not self.ssl_ca_certs or self.ssl_cert_reqs != "none", "server.ssl_ca_certs", self.ssl_ca_certs,
               'client certificates are not asked for: set ssl_cert_reqs = "optional" or "required"')

    def _validate_cors(self) -> None:
        """FastChat's CORS options, refused where a browser would refuse them or they would do nothing."""
        is_any_origin = "*" in self.allowed_origins
        _check(not (self.allow_credentials and is_any_origin), "server.allow_credentials", True,
               'browsers refuse credentials with allowed_origins = ["*"]; list the origins instead')
        defaults = ServerConfig()
        for name in ("allow_credentials", "allowed_methods", "allowed_headers"):
            value = getattr(self, name)
            _check(bool(self.allowed_origins) or value == getattr(defaults, name), f"server.{name}",
                   value if isinstance(value, bool) else list(value), "has no effect without allowed_origins")
        for i, method in enumerate(self.allowed_methods):
            _check(method == "*" or method in HTTP_METHODS, f"server.allowed_methods[{i}]", method,
                   f'expected "*" or one of {", ".join(HTTP_METHODS)}')
        for i, header in enumerate(self.allowed_headers):
            _check(bool(_HEADER_RE.match(header)), f"server.allowed_headers[{i}]", header,
                   'expected "*" or an HTTP header name')


@dataclass(frozen=True)
class WorkerConfig:
    """One `[[workers]]` entry: a model on a device with its own engine."""

    model_path: str = ""
    """Local model folder or Hugging Face hub id (read from the local cache)."""
    model_names: tuple[str, ...] = ()
    """Names this worker serves; default is the folder name of model_path."""
    device: str = "cpu"
    """Where the model runs: "cpu", "cuda", "cuda:N" or "mps"."""
    dtype: str = "auto"
    """Weight dtype: "auto" (float32 on CPU; on GPUs the checkpoint's half dtype, bfloat16 for float32 checkpoints), "float32", "bfloat16", "float16"."""
    speed: float = 1.0
    """Relative speed, the dispatch weight of this worker."""
    max_num_seqs: int = 64
    """Most sequences in the running batch at once."""
    max_model_len: int = 0
    """Context length in tokens (prompt + output); 0 takes the model's own."""
    max_num_batched_tokens: int = 2048
    """Token budget of one engine step; long prompts are prefilled in chunks of at most this."""
    block_size: int = 16
    """Tokens per KV-cache block."""
    kv_cache_tokens: int = 0
    """KV-cache capacity in tokens; 0 sizes it automatically (from free memory on GPUs)."""
    gpu_memory_utilization: float = 0.85
    """Share of the GPU's memory the worker may use for weights, activations and KV cache."""
    enable_prefix_caching: bool = True
    """Reuse cached KV blocks of identical prompt prefixes across requests."""
    cuda_graphs: bool = True
    """Replay decode steps from captured CUDA graphs (CUDA with Triton only); false runs every step eagerly."""
    compile: bool = True
    """torch.compile the model for the CUDA-graph path (fuses norms, RoPE and activations); longer start-up; only used when cuda_graphs is on."""
    cpu_compile: bool = False
    """On the CPU, torch.compile the model's forward (inductor's C++ kernels: fused norms, RoPE and activations, less Python per step); compiles while the worker starts (seconds to minutes)."""
    fuse_projections: bool = True
    """Run each layer's q/k/v projections as one GEMM, and gate/up as one (weights concatenated at load; plain Linears on one device)."""
    async_scheduling: bool = True
    """On CUDA, draw each step's tokens (with their logprobs) on the GPU and queue the next step before reading them back, so the host's per-step work overlaps the GPU; penalties count the token still in flight on the GPU as well."""
    max_waiting: int = 1024
    """Most requests queued behind the running batch; beyond it requests get 503."""
    stream_interval: int = 1
    """Tokens generated between two streamed chunks."""
    seed: int = 0
    """Seed of the worker's sampler for requests that give none."""
    chat_template: str = ""
    """Chat template: a built-in name (vicuna_v1.1, llama-2, alpaca, chatml, chatglm2, zero_shot), a Jinja string or a file; empty uses the tokenizer's."""
    tool_parser: str = ""
    """How the model writes tool calls: "hermes" (<tool_call> JSON: Qwen2.5/3, Hermes) or "llama3_json"; empty: chosen from the chat template (tools are refused when none fits)."""
    reasoning_parser: str = ""
    """How the model marks its reasoning: "think" (<think>...</think>: Qwen3, DeepSeek-R1); empty: chosen from the chat template, else none."""
    enable_chat: bool = True
    """Serve /v1/chat/completions for this model (needs a chat template); false: completions only."""
    tokenizer_path: str = ""
    """Tokenizer folder or hub id when it is not model_path's (FastChat's --tokenizer); empty: model_path's."""
    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint to run."""
    allow_pickle: bool = False
    """Allow loading pickle (.bin) weights; safetensors only otherwise."""
    revision: str = ""
    """Hub revision (branch, tag or commit) when model_path is a hub id."""
    task: str = "auto"
    """"generate" (chat/completions), "embed" (/v1/embeddings; causal LMs pool their last token) or "auto"."""
    truncate: bool = False
    """Embedding workers: cut inputs longer than the model's limit instead of answering 400."""
    num_gpus: int = 1
    """GPUs to spread the model over, from `device`'s index on (accelerate's balanced device map)."""
    max_gpu_memory: str = ""
    """Most memory per GPU for weights, e.g. "13GiB" (GiB, MiB, GB or MB); empty: what is free."""
    load_8bit: bool = False
    """8-bit weights through bitsandbytes (CUDA only; needs the `quant` extra)."""
    load_4bit: bool = False
    """4-bit NF4 weights through bitsandbytes (CUDA only; needs the `quant` extra)."""
    cpu_offloading: bool = False
    """With load_8bit: weights that do not fit the GPU(s) stay in CPU memory."""
    engine_path: str = "auto"
    """Engine path: "auto" (the fast paged path when it serves the model's attention and passes the load-time probe, else the model's own forward), "fast" (refuse to start otherwise) or "generic" (the model's own forward and cache)."""

    def validate(self, path: str) -> None:
        _check(bool(self.model_path), f"{path}.model_path", self.model_path, "a model folder or hub id is required")
        _check(bool(_DEVICE_RE.match(self.device)), f"{path}.device", self.device,
               'expected "cpu", "cuda", "cuda:N" or "mps"')
        _check(self.dtype in DTYPES, f"{path}.dtype", self.dtype, f"expected one of {', '.join(DTYPES)}")
        _check(self.speed > 0, f"{path}.speed", self.speed, "expected a positive number")
        _check(1 <= self.max_num_seqs <= 4096, f"{path}.max_num_seqs", self.max_num_seqs, "expected 1..4096")
        _check(self.max_model_len >= 0, f"{path}.max_model_len", self.max_model_len, "expected >= 0")
        _check(self.max_num_batched_tokens >= 16, f"{path}.max_num_batched_tokens",
               self.max_num_batched_tokens, "expected at least 16")
        _check(self.block_size in (8, 16, 32, 64, 128, 256), f"{path}.block_size", self.block_size,
               "expected a power of two from 8 to 256")
        _check(self.kv_cache_tokens >= 0, f"{path}.kv_cache_tokens", self.kv_cache_tokens, "expected >= 0")
        _check(0.05 <= self.gpu_memory_utilization <= 0.99, f"{path}.gpu_memory_utilization",
               self.gpu_memory_utilization, "expected 0.05..0.99")
        _check(self.max_waiting >= 0, f"{path}.max_waiting", self.max_waiting, "expected >= 0")
        _check(1 <= self.stream_interval <= 64, f"{path}.stream_interval", self.stream_interval,
               "expected 1..64")
        for i, name in enumerate(self.model_names):
            _check(bool(name.strip()), f"{path}.model_names[{i}]", name, "names must not be empty")
        _check(self.tool_parser in ('', *TOOL_PARSERS), f"{path}.tool_parser", self.tool_parser,
               f"expected one of {', '.join(TOOL_PARSERS)} (or empty)")
        _check(self.reasoning_parser in ('', *REASONING_PARSERS), f"{path}.reasoning_parser", self.reasoning_parser,
               f"expected one of {', '.join(REASONING_PARSERS)} (or empty)")
        self._validate_loading(path)

    def _validate_loading(self, path: str) -> None:
        """The loading options that contradict each other, whatever the machine."""
        _check(self.task in TASKS, f"{path}.task", self.task, f"expected one of {', '.join(TASKS)}")
        _check(self.engine_path in ENGINE_PATHS, f"{path}.engine_path", self.engine_path,
               f"expected one of {', '.join(ENGINE_PATHS)}")
        _check(1 <= self.num_gpus <= 64, f"{path}.num_gpus", self.num_gpus, "expected 1..64")
        _check(not self.max_gpu_memory or _MEMORY_RE.match(self.max_gpu_memory) is not None,
               f"{path}.max_gpu_memory", self.max_gpu_memory,
               'expected a size like "13GiB" (a number and GiB, MiB, GB or MB)')
        _check(not (self.load_8bit and self.load_4bit), f"{path}.load_4bit", True,
               "load_8bit and load_4bit exclude each other; pick one")
        _check(not self.cpu_offloading or self.load_8bit, f"{path}.cpu_offloading", True,
               "needs load_8bit = true (only 8-bit weights spill to CPU memory)")
        is_cuda = self.device.startswith("cuda")
        _check(self.num_gpus == 1 or is_cuda, f"{path}.num_gpus", self.num_gpus,
               f'more than one GPU needs device = "cuda" or "cuda:N", not "{self.device}"')
        for key in ("load_8bit", "load_4bit"):
            _check(not getattr(self, key) or is_cuda, f"{path}.{key}", True,
                   f'bitsandbytes quantization needs a CUDA device, not "{self.device}"')
        _check(not self.max_gpu_memory or is_cuda, f"{path}.max_gpu_memory", self.max_gpu_memory,
               f'applies to CUDA devices only, not "{self.device}"')

    @property
    def max_gpu_memory_bytes(self) -> int | None:
        """`max_gpu_memory` in bytes, None when unset."""
        match = _MEMORY_RE.match(self.max_gpu_memory)
        if match is None:
            return None
        return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])

    @property
    def served_names(self) -> tuple[str, ...]:
        """The names this worker answers to."""
        return self.model_names or (Path(self.model_path.rstrip("/")).name,)


@dataclass(frozen=True)
class UIConfig:
    """The `[ui]` table: the browser chat page and arena served by the same process."""

    enabled: bool = True
    """Serve the browser UI at / (chat), /arena and /leaderboard."""
    votes_path: str = "votes.jsonl"
    """JSON-lines file the arena appends one line per vote to."""
    votes_max_bytes: int = 16 * 1024 * 1024
    """Past this size the votes file is rotated to `<votes_path>.1` (older ones shift to .2, ...)."""
    votes_backups: int = 3
    """Rotated votes files kept; the oldest beyond them is deleted (disk use <= (1 + this) x votes_max_bytes)."""
    leaderboard_window: int = 10_000
    """The leaderboard rates the latest this many battle votes (the window bounds its cost and memory)."""
    battles_per_minute: int = 20
    """Battles one client (its API key, else its address) may start per minute; 0 = no limit."""
    votes_per_minute: int = 20
    """Votes one client (its API key, else its address) may post per minute; 0 = no limit."""
    per_model_metrics: bool = False
    """With the UI on and two or more model names served, still show load per model and worker on
    /metrics and /ready. Off, /metrics sums those series over all models and /ready leaves per-worker
    load out: diffed around one battle message, they would name the battle's hidden models (API keys
    do not help: the arena's voters hold them)."""

    def validate(self) -> None:
        _check(bool(self.votes_path), "ui.votes_path", self.votes_path, "a file path is required")
        _check(self.votes_max_bytes >= 4096, "ui.votes_max_bytes", self.votes_max_bytes, "expected at least 4096")
        _check(0 <= self.votes_backups <= 100, "ui.votes_backups", self.votes_backups, "expected 0..100")
        _check(self.leaderboard_window >= 1, "ui.leaderboard_window", self.leaderboard_window, "expected at least 1")
        for name in ("battles_per_minute", "votes_per_minute"):
            value = getattr(self, name)
            _check(0 <= value <= 100_000, f"ui.{name}", value, "expected 0 (no limit) to 100000")


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    server: ServerConfig = field(default_factory=ServerConfig)
    workers: tuple[WorkerConfig, ...] = ()
    ui: UIConfig = field(default_factory=UIConfig)

    def validate(self) -> None:
        _check(len(self.workers) >= 1, "workers", "[]", "at least one [[workers]] table is required")
        self.server.validate()
        self.ui.validate()
        for i, worker in enumerate(self.workers):
            worker.validate(f"workers[{i}]")


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a TOML configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> Config:
    """Build a validated `Config` from already-parsed TOML data."""
    _reject_unknown(data, {"server", "workers", "ui"}, "")
    server = _with_key_file(_build(ServerConfig, data.get("server", {}), "server"))
    ui = _build(UIConfig, data.get("ui", {}), "ui")
    raw_workers = data.get("workers", [])
    if not isinstance(raw_workers, list):
        raise ConfigError("workers: expected an array of tables ([[workers]])")
    workers = tuple(_build(WorkerConfig, raw, f"workers[{i}]") for i, raw in enumerate(raw_workers))
    config = Config(server=server, workers=workers, ui=ui)
    config.validate()
    return config


def _with_key_file(server: ServerConfig) -> ServerConfig:
    """`api_keys` plus the keys in `api_keys_file`, when set."""
    if not server.api_keys_file:
        return server
    try:
        lines = Path(server.api_keys_file).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"server.api_keys_file = {_show(server.api_keys_file)}: cannot read it: "
                          f"{exc.strerror}") from None
    keys = tuple(k for k in (line.strip() for line in lines) if k and not k.startswith("#"))
    if not keys:
        raise ConfigError(f"server.api_keys_file = {_show(server.api_keys_file)}: no keys in it")
    return dataclasses.replace(server, api_keys=(*server.api_keys, *keys))


def with_overrides(config: Config, **server_fields: Any) -> Config:
    """A copy of `config` with some `[server]` fields replaced (None values are ignored)."""
    changes = {k: v for k, v in server_fields.items() if v is not None}
    return dataclasses.replace(config, server=dataclasses.replace(config.server, **changes))


def _check(ok: bool, path: str, value: object, reason: str) -> None:
    if not ok:
        raise ConfigError(f"{path} = {_show(value)}: {reason}")


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _reject_unknown(data: Mapping[str, Any], known: set[str], path: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a table, got {_show(data)}")
    for key in data:
        if key not in known:
            where = f"{path}.{key}" if path else key
            raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(known))})")


_T = typing.TypeVar("_T")


def _build(cls: type[_T], data: Mapping[str, Any], path: str) -> _T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    _reject_unknown(data, names, path)
    values = {key: _coerce(value, hints[key], f"{path}.{key}") for key, value in data.items()}
    return cls(**values)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path} = {_show(value)}: expected a list")
        return tuple(_coerce(v, item_type, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return value
    expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[hint]
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"{path} = {_show(value)}: expected {expected}")
    return value
