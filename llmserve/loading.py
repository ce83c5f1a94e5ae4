"""Loading a worker's model and tokenizer, and sizing its KV cache.

Safety defaults: safetensors only unless `allow_pickle`, no remote code unless
`trust_remote_code`. A `model_path` that is not a folder is a Hugging Face hub id read from the
local cache only (`local_files_only`): nothing is downloaded at start-up, so `HF_HUB_OFFLINE`
holds whatever it is set to. `check_worker` runs every check that needs the machine or the model
files, so `preflight` can fail with one line before any worker loads.

Loading is one straight sequence: `resolve_worker` (device, model folder, task, config, dtype:
every check that needs the machine or the files) -> place (`placement.py`) -> load -> the model's
context; the builder then probes it, sizes the KV cache (`kv_cache_spec`) and builds the engine.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from llmserve.config import WorkerConfig
from llmserve.embedding.pooling import detect_embedding_model
from llmserve.engine.attention_contract import AttentionContract, inspect_attention
from llmserve.engine.kv_cache import KVCacheSpec
from llmserve.errors import ConfigError
from llmserve.placement import (
    check_bitsandbytes,
    check_gpus,
    describe_placement,
    keep_hidden_states_on,
    layer_devices,
    plan_placement,
    weight_bytes_by_device,
)
from llmserve.quantization import check_quantized_checkpoint, describe_quantized, settle_compressed_tensors
from llmserve.tool_parsers.harmony_messages import check_harmony

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CPU_KV_BUDGET_BYTES = 1024**3
_HUB_ID_RE = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# A tokenizer folder holds at least one of these.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
# Options an embedding worker (one device, full precision) cannot honour.
_GENERATE_ONLY = ("load_8bit", "load_4bit", "cpu_offloading", "max_gpu_memory", "tokenizer_path")


@dataclass
class LoadedModel:
    """A model ready to serve, with what the engine needs to know about it."""

    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    stop_token_ids: frozenset[int]
    vocab_size: int
    num_parameters: int
    weight_bytes: int
    layer_devices: list[torch.device] = field(default_factory=list)
    """Execution device of each layer (where its KV cache lives); empty means all on `device`."""
    placement: str = ""
    """One-line summary of where the layers run, for the start-up log."""
    quantization: str | None = None
    """"8-bit" / "4-bit NF4" when bitsandbytes quantized the weights."""
    fast_kernels: bool = True
    """The whole model on one device without accelerate hooks or bitsandbytes layers: Triton kernels,
    CUDA graphs and fused projections can run (else eagerly, torch attention only)."""


def resolve_device(device: str, path: str = "device") -> torch.device:
    """The torch device for a config string, checked against what this machine has."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f'{path} = "{device}": CUDA was asked for but no GPU is visible')
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f'{path} = "{device}": only {torch.cuda.device_count()} GPU(s) visible')
        return torch.device("cuda", index)
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f'{path} = "mps": MPS is not available on this machine')
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, checkpoint_dtype: torch.dtype | None) -> torch.dtype:
    """"auto": float32 on the CPU; on accelerators the checkpoint's half-precision dtype, and for
    float32 (or unknown) checkpoints bfloat16 where the GPU supports it, else float16."""
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32
    if checkpoint_dtype in (torch.bfloat16, torch.float16):
        return checkpoint_dtype
    if device.type == "cuda" and _supports_bf16(device):
        return torch.bfloat16
    return torch.float16


def _supports_bf16(device: torch.device) -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported())
    except (AssertionError, RuntimeError):  # a build or mock without a real device: assume a modern GPU
        return True


def resolve_model_dir(model_path: str, revision: str = "", path: str = "model_path") -> Path:
    """The local folder of a model: `model_path` itself, or a hub id's snapshot in the local cache."""
    folder = Path(model_path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise ConfigError(f'{path} = "{model_path}": not a folder')
    if not _HUB_ID_RE.match(model_path):
        raise ConfigError(f'{path} = "{model_path}": no such folder')
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(model_path, revision=revision or None, local_files_only=True))
    except (OSError, ValueError):
        at = f" at revision \"{revision}\"" if revision else ""
        raise ConfigError(
            f'{path} = "{model_path}": no such folder, and no such model{at} in the local Hugging Face '
            f"cache ({constants.HF_HUB_CACHE}); download it first (hf download {model_path}) or fix the path"
        ) from None


def check_weights(model_path: str | Path, allow_pickle: bool, path: str = "model_path") -> None:
    """A local folder must hold weights in a format we are allowed to load, and a config.json."""
    folder = Path(model_path)
    if not folder.is_dir():
        raise ConfigError(f'{path} = "{model_path}": not a folder')
    if not any(folder.glob("*.safetensors")):
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            if not allow_pickle:
                raise ConfigError(f'{path} = "{model_path}": only pickle weights (.bin) found; '
                                  "set allow_pickle = true to load them")
        else:
            raise ConfigError(f'{path} = "{model_path}": no model weights (*.safetensors) in this folder')
    if not (folder / "config.json").is_file():
        raise ConfigError(f'{path} = "{model_path}": no config.json in this folder')


def resolve_task(config: WorkerConfig, model_dir: Path, path: str = "workers[0]") -> str:
    """"generate" or "embed": the configured task, or for "auto" what the model folder holds."""
    is_embedding_model = detect_embedding_model(model_dir)
    if config.task == "auto":
        return "embed" if is_embedding_model else "generate"
    if config.task == "generate" and is_embedding_model:
        architectures = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("architectures")
        raise ConfigError(f'{path}.task = "generate": {config.model_path} is an embedding model '
                          f'({", ".join(architectures or ["no language-model head"])}); use task = "embed"')
    return config.task


def tokenizer_dir(config: WorkerConfig, model_dir: Path, path: str = "workers[0]") -> Path:
    """The tokenizer's folder: `tokenizer_path` (a folder or a cached hub id) when set, else the model's."""
    if not config.tokenizer_path:
        return model_dir
    folder = resolve_model_dir(config.tokenizer_path, config.revision, f"{path}.tokenizer_path")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ConfigError(f'{path}.tokenizer_path = "{config.tokenizer_path}": no tokenizer in this folder '
                          f"(none of {', '.join(_TOKENIZER_FILES)})")
    return folder


@dataclass(frozen=True)
class ResolvedWorker:
    """What a worker's config resolves to on this machine, its checks passed: the first step of loading."""

    device: torch.device
    model_dir: Path
    task: str
    """"generate" or "embed"."""
    hf_config: Any
    dtype: torch.dtype
    prequantized: Any
    """The checkpoint's own quantization (see quantization.py), None for plain weights."""


def resolve_worker(config: WorkerConfig, path: str) -> ResolvedWorker:
    """Resolve and check, once: device, GPUs, bitsandbytes, model folder and weights, task, the model's
    config and quantization, dtype. Static contradictions are `WorkerConfig.validate`'s."""
    device = resolve_device(config.device, f"{path}.device")
    check_gpus(config, device, path)
    check_bitsandbytes(config, path)
    model_dir = resolve_model_dir(config.model_path, config.revision, f"{path}.model_path")
    check_weights(model_dir, config.allow_pickle, f"{path}.model_path")
    task = resolve_task(config, model_dir, path)
    hf_config = read_hf_config(model_dir, config, path)
    prequantized = check_quantized_checkpoint(config, hf_config, path, device)
    dtype = resolve_dtype(config.dtype, device, getattr(hf_config, "dtype", None))
    return ResolvedWorker(device, model_dir, task, hf_config, dtype, prequantized)


def check_worker(config: WorkerConfig, path: str) -> str:
    """Every start-up check that needs the machine or the model files; returns the worker's task."""
    worker = resolve_worker(config, path)
    if worker.task == "embed":
        for key in _GENERATE_ONLY:
            value = getattr(config, key)
            if value:
                shown = "true" if value is True else f'"{value}"'
                raise ConfigError(f'{path}.{key} = {shown}: not supported by embedding workers (task "embed")')
        if config.num_gpus != 1:
            raise ConfigError(f"{path}.num_gpus = {config.num_gpus}: embedding workers run on one device")
        if config.engine_path != "auto":
            raise ConfigError(f'{path}.engine_path = "{config.engine_path}": embedding workers run the embedding '
                              'engine; the fast and generic paths are for text generation')
    elif worker.device.type == "cuda":  # a device map that cannot hold the weights fails here, not at load
        plan_placement(config, worker.device, worker.dtype, worker.hf_config, path, worker.prequantized)
    return worker.task


def read_hf_config(model_dir: Path, config: WorkerConfig, path: str) -> Any:
    """The model's transformers config; an unknown architecture or refused remote code is one line."""
    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().split("\n")[0].split(". ")[0][:200]
        raise ConfigError(f'{path}.model_path = "{config.model_path}": cannot read its config.json: {reason}') from None


def load_model(config: WorkerConfig, path: str = "workers[0]", resolved: ResolvedWorker | None = None) -> LoadedModel:
    """Load model and tokenizer onto the configured device(s), dtype and quantization (resolving the
    worker first unless `resolved` is given)."""
    worker = resolved or resolve_worker(config, path)
    device, model_dir, hf_config, dtype = worker.device, worker.model_dir, worker.hf_config, worker.dtype
    prequantized = worker.prequantized
    common: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(config, model_dir, path), **common)
    template = getattr(tokenizer, "chat_template", None)
    check_harmony(config.tool_parser, config.reasoning_parser, template if isinstance(template, str) else "", path)
    placement = plan_placement(config, device, dtype, hf_config, path, prequantized)
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, use_safetensors=None if config.allow_pickle else True,
        **placement.load_kwargs, **common,
    )
    if placement.fast_kernels:
        unwrapped = settle_compressed_tensors(model) if prequantized is not None else 0
        if unwrapped:
            log.info("%s: %d module(s) taken out of compressed-tensors' offloading (one device)", path, unwrapped)
        model.to(device)
    model.eval()
    if prequantized is not None:
        log.info("%s: %s", path, describe_quantized(prequantized, model))
    main = placement.main_device
    devices = layer_devices(model, hf_config.num_hidden_layers, main)
    keep_hidden_states_on(model, main)
    # The model's own context: sliding-window layers attend within their window on every path.
    model_len = int(getattr(hf_config, "max_position_embeddings", 0) or 4096)
    max_model_len = min(config.max_model_len, model_len) if config.max_model_len else model_len
    num_parameters = getattr(model, "num_parameters", None)
    by_device = weight_bytes_by_device(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=main,
        dtype=dtype,
        max_model_len=max_model_len,
        stop_token_ids=stop_token_ids(str(model_dir), tokenizer),
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        num_parameters=int(num_parameters()) if callable(num_parameters) else sum(p.numel() for p in model.parameters()),
        weight_bytes=sum(by_device.values()),
        layer_devices=devices,
        placement=_placement_summary(devices, getattr(model, "hf_device_map", None), by_device),
        quantization=placement.quantization,
        fast_kernels=placement.fast_kernels,
    )


def _placement_summary(devices: list[torch.device], device_map: Any, by_device: dict[str, int]) -> str:
    text = describe_placement(devices, device_map)
    if len(by_device) > 1:
        text += " [weights " + ", ".join(f"{d} {n / 1024**3:.2f} GiB" for d, n in sorted(by_device.items())) + "]"
    return text


def stop_token_ids(model_path: str, tokenizer: Any) -> frozenset[int]:
    """EOS and end-of-turn ids: the tokenizer's eos plus the generation config's eos list."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    try:
        generation = GenerationConfig.from_pretrained(model_path)
    except OSError:
        generation = None
    eos = getattr(generation, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(i) for i in eos)
    return frozenset(ids)


def kv_cache_spec(loaded: LoadedModel, config: WorkerConfig, contract: AttentionContract | None = None) -> KVCacheSpec:
    """Size the block pool: configured tokens, else free GPU memory, else a CPU budget.

    Each layer's share is what it really stores (`contract`, inspected from the model when not given):
    its own KV heads and key and value head dims. A model the fast path cannot serve is refused.
    """
    contract = contract or inspect_attention(loaded.model)
    if contract.unsupported:
        raise ConfigError("the paged KV cache cannot serve this model: " + "; ".join(contract.unsupported))
    layers = contract.kv_specs()
    probe = KVCacheSpec.from_layers(layers, config.block_size, 1, loaded.dtype)
    if config.kv_cache_tokens:
        num_tokens = config.kv_cache_tokens
    elif loaded.device.type == "cuda":
        itemsize = probe.bytes_per_token // sum(layer.elements_per_token for layer in layers)
        num_tokens = _gpu_kv_tokens(loaded, config, [layer.elements_per_token * itemsize for layer in layers])
    else:
        wanted = config.max_num_seqs * loaded.max_model_len
        num_tokens = min(wanted, _CPU_KV_BUDGET_BYTES // probe.bytes_per_token)
    spec = probe.with_num_blocks(num_tokens // config.block_size)
    if spec.num_tokens < loaded.max_model_len and not config.max_model_len and not config.kv_cache_tokens:
        log.warning("KV cache holds %d tokens: context length lowered from %d to fit it",
                    spec.num_tokens, loaded.max_model_len)
        loaded.max_model_len = spec.num_tokens
    if spec.num_tokens < loaded.max_model_len:
        raise ConfigError(
            f"KV cache holds {spec.num_tokens} tokens, fewer than max_model_len = {loaded.max_model_len}; "
            "lower max_model_len or give the cache more memory (kv_cache_tokens / gpu_memory_utilization)"
        )
    return spec


def _gpu_kv_tokens(loaded: LoadedModel, config: WorkerConfig, bytes_per_token_per_layer: int | list[int]) -> int:
    """Tokens whose keys and values fit on every GPU that runs layers, each GPU keeping
    (1 - gpu_memory_utilization) of its memory and one step's activations free. Bytes per token
    are one number for every layer or one per layer."""
    hf: Any = loaded.model.config
    devices = loaded.layer_devices or [loaded.device] * int(hf.num_hidden_layers)
    per_layer = bytes_per_token_per_layer
    if isinstance(per_layer, int):
        per_layer = [per_layer] * len(devices)
    activation = _activation_bytes(loaded, config)
    bytes_by_device: Counter[torch.device] = Counter()
    for device, layer_bytes in zip(devices, per_layer, strict=True):
        bytes_by_device[device] += layer_bytes
    fits = []
    for device, device_bytes in bytes_by_device.items():
        free, total = torch.cuda.mem_get_info(device)
        room = max(0.0, free - total * (1 - config.gpu_memory_utilization) - activation)
        fits.append(int(room // device_bytes))
    return min(fits)


def _activation_bytes(loaded: LoadedModel, config: WorkerConfig) -> int:
    """A generous estimate of one step's peak activations (logits dominate for big vocabularies)."""
    hf: Any = loaded.model.config
    tokens = config.max_num_batched_tokens
    hidden = tokens * max(hf.hidden_size, getattr(hf, "intermediate_size", 0)) * 4 * 4
    logits = config.max_num_seqs * loaded.vocab_size * 4 * 3
    return hidden + logits
