"""`llmserve chat` options, and the one place where its loading flags become a `WorkerConfig`.

Loading flags map onto WorkerConfig fields by name (`LOADING_FLAGS`). A flag whose field this
build's WorkerConfig lacks is refused with a clear message instead of being ignored, so the
mapping keeps working while fields are added.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from llmserve.chat.backends import ChatError, GenerationParams
from llmserve.config import WorkerConfig

LOADING_FLAGS: tuple[tuple[str, str], ...] = (
    ("--num-gpus", "num_gpus"),
    ("--max-gpu-memory", "max_gpu_memory"),
    ("--load-8bit", "load_8bit"),
    ("--load-4bit", "load_4bit"),
    ("--cpu-offloading", "cpu_offloading"),
    ("--revision", "revision"),
    ("--tokenizer-path", "tokenizer_path"),
    ("--engine-path", "engine_path"),
)
"""(flag, WorkerConfig field) of the loading flags passed through only when given."""

LOCAL_ONLY_FLAGS = ("--device", "--dtype", "--chat-template", "--max-model-len",
                    "--trust-remote-code") + tuple(flag for flag, _ in LOADING_FLAGS)
"""Flags that make sense only when the model is loaded in this process."""


@dataclass(frozen=True)
class ChatOptions:
    """Everything `llmserve chat` was asked to do."""

    model_path: str | None = None
    """Model folder or hub id to load in-process (local mode)."""
    base_url: str | None = None
    """OpenAI-compatible server URL including /v1 (remote mode)."""
    model: str | None = None
    """Model name on the server; default the first it lists."""
    api_key: str | None = None
    """Bearer key for the server."""
    ca_cert: str | None = None
    """PEM file of the CA that signed an https server's certificate (else the system's, or SSL_CERT_FILE)."""
    device: str = "auto"
    """"auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:N" or "mps"."""
    dtype: str = "auto"
    """Weight dtype, as WorkerConfig.dtype."""
    chat_template: str = ""
    """Template override: Jinja string or file; empty uses the tokenizer's."""
    max_model_len: int = 0
    """Context length in tokens; 0 takes the model's own."""
    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint to run."""
    seed: int | None = None
    """Sampler seed; runs with the same seed and inputs give the same answers."""
    loading: tuple[tuple[str, Any], ...] = ()
    """(flag, value) of the loading flags given on the command line."""
    params: GenerationParams = GenerationParams()
    """Sampling of each answer."""
    system: str | None = None
    """System message placed before every conversation."""
    keep_history: bool = True
    """Send the earlier turns with each message (off: --no-history)."""
    is_debug: bool = False
    """Print the debug line after each answer."""
    style: str | None = None
    """"simple", "rich", or None for rich on a terminal."""
    multiline: bool = False
    """Rich style: Enter adds a line, Esc+Enter sends."""

    @property
    def is_remote(self) -> bool:
        return self.base_url is not None


def options_from_args(args: argparse.Namespace) -> ChatOptions:
    """Map parsed `llmserve chat` flags onto ChatOptions; ChatError for flags that do not go together."""
    loading = tuple((flag, getattr(args, field)) for flag, field in LOADING_FLAGS
                    if getattr(args, field) not in (None, False))
    options = ChatOptions(
        model_path=args.model_path, base_url=args.base_url, model=args.model, api_key=args.api_key,
        ca_cert=getattr(args, "ca_cert", None),
        device=args.device or "auto", dtype=args.dtype or "auto", chat_template=args.chat_template or "",
        max_model_len=args.max_model_len or 0, trust_remote_code=args.trust_remote_code, seed=args.seed,
        loading=loading,
        params=GenerationParams(args.temperature, args.top_p, args.max_new_tokens),
        system=args.system, keep_history=not args.no_history, is_debug=args.debug, style=args.style,
        multiline=args.multiline,
    )
    options.params.validate()
    if options.is_remote:
        given = [flag for flag in LOCAL_ONLY_FLAGS if _is_given(args, flag)]
        if given:
            raise ChatError(f"{', '.join(given)}: only with --model-path (the server loads its own model)")
    elif options.model or options.api_key:
        raise ChatError("--model and --api-key go with --base-url")
    elif options.ca_cert:
        raise ChatError("--ca-cert goes with --base-url")
    return options


def worker_config(options: ChatOptions) -> WorkerConfig:
    """The validated WorkerConfig of a one-sequence engine for local chat; ConfigError or ChatError."""
    config = WorkerConfig(**worker_fields(options))
    config.validate("chat")
    return config


def worker_fields(options: ChatOptions) -> dict[str, Any]:
    """WorkerConfig fields from the options; ChatError for a loading flag the config lacks a field for."""
    assert options.model_path is not None
    names = {f.name for f in dataclasses.fields(WorkerConfig)}
    hints = typing.get_type_hints(WorkerConfig)
    fields: dict[str, Any] = {
        "model_path": options.model_path,
        "device": resolve_auto_device(options.device),
        "dtype": options.dtype,
        "max_num_seqs": 1,
        "max_waiting": 0,
        "max_model_len": options.max_model_len,
        "chat_template": options.chat_template,
        "trust_remote_code": options.trust_remote_code,
        "seed": options.seed or 0,
    }
    for flag, value in options.loading:
        name = dict(LOADING_FLAGS)[flag]
        if name not in names:
            raise ChatError(f"{flag} is not supported by this version of llmserve yet "
                            f"(the worker config has no '{name}' field)")
        fields[name] = _convert(value, hints[name], flag)
    return fields


def resolve_auto_device(device: str) -> str:
    """"auto" becomes the best device present: cuda, then mps, then cpu."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _is_given(args: argparse.Namespace, flag: str) -> bool:
    value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
    return value not in (None, False, "", 0)


def _convert(value: Any, hint: Any, flag: str) -> Any:
    """A flag's value as the field's type (int, float, str or bool)."""
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        try:
            return hint(value)
        except ValueError:
            raise ChatError(f"{flag} {value}: expected {hint.__name__}") from None
    return value
