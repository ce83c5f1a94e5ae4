"""Loading a worker's model and tokenizer, and sizing its KV cache.

Safety defaults: safetensors only unless `allow_pickle`, no remote code unless
`trust_remote_code`, hub ids resolved from the local cache (HF_HUB_OFFLINE is respected).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from llmserve.config import WorkerConfig
from llmserve.engine.kv_cache import KVCacheSpec
from llmserve.errors import ConfigError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CPU_KV_BUDGET_BYTES = 1024**3


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
    """float32 on CPU and for "auto" without a checkpoint dtype; otherwise as asked."""
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cpu" or checkpoint_dtype is None or checkpoint_dtype == torch.float32:
        return torch.float32
    return checkpoint_dtype


def check_weights(model_path: str, allow_pickle: bool, path: str = "model_path") -> None:
    """A local folder must hold weights in a format we are allowed to load."""
    folder = Path(model_path)
    if not folder.exists():
        return  # a hub id: the loader resolves it from the local cache
    if not folder.is_dir():
        raise ConfigError(f'{path} = "{model_path}": not a folder')
    if any(folder.glob("*.safetensors")):
        return
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        if allow_pickle:
            return
        raise ConfigError(f'{path} = "{model_path}": only pickle weights (.bin) found; set allow_pickle = true to load them')
    raise ConfigError(f'{path} = "{model_path}": no model weights (*.safetensors) in this folder')


def load_model(config: WorkerConfig, path: str = "workers[0]") -> LoadedModel:
    """Load model and tokenizer onto the configured device and dtype."""
    device = resolve_device(config.device, f"{path}.device")
    check_weights(config.model_path, config.allow_pickle, f"{path}.model_path")
    common: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
    if config.revision:
        common["revision"] = config.revision
    hf_config = AutoConfig.from_pretrained(config.model_path, **common)
    dtype = resolve_dtype(config.dtype, device, getattr(hf_config, "dtype", None))
    tokenizer = AutoTokenizer.from_pretrained(config.model_path, **common)
    model = AutoModelForCausalLM.from_pretrained(
        config.model_path, dtype=dtype, use_safetensors=not config.allow_pickle, **common
    )
    model.to(device)
    model.eval()
    model_len = int(getattr(hf_config, "max_position_embeddings", 0) or 4096)
    max_model_len = min(config.max_model_len, model_len) if config.max_model_len else model_len
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        max_model_len=max_model_len,
        stop_token_ids=stop_token_ids(config.model_path, tokenizer),
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        num_parameters=sum(p.numel() for p in model.parameters()),
        weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
    )


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


def kv_cache_spec(loaded: LoadedModel, config: WorkerConfig) -> KVCacheSpec:
    """Size the block pool: configured tokens, else free GPU memory, else a CPU budget."""
    hf = loaded.model.config
    num_heads = hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // num_heads
    num_kv_heads = getattr(hf, "num_key_value_heads", None) or num_heads
    probe = KVCacheSpec(hf.num_hidden_layers, num_kv_heads, head_dim, config.block_size, 1, loaded.dtype)
    if config.kv_cache_tokens:
        num_tokens = config.kv_cache_tokens
    elif loaded.device.type == "cuda":
        free, total = torch.cuda.mem_get_info(loaded.device)
        reserve = total * (1 - config.gpu_memory_utilization)
        num_tokens = int(max(0.0, free - reserve - _activation_bytes(loaded, config)) // probe.bytes_per_token)
    else:
        wanted = config.max_num_seqs * loaded.max_model_len
        num_tokens = min(wanted, _CPU_KV_BUDGET_BYTES // probe.bytes_per_token)
    num_blocks = num_tokens // config.block_size
    spec = KVCacheSpec(hf.num_hidden_layers, num_kv_heads, head_dim, config.block_size, num_blocks, loaded.dtype)
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


def _activation_bytes(loaded: LoadedModel, config: WorkerConfig) -> int:
    """A generous estimate of one step's peak activations (logits dominate for big vocabularies)."""
    hf = loaded.model.config
    tokens = config.max_num_batched_tokens
    hidden = tokens * max(hf.hidden_size, getattr(hf, "intermediate_size", 0)) * 4 * 4
    logits = config.max_num_seqs * loaded.vocab_size * 4 * 3
    return hidden + logits
