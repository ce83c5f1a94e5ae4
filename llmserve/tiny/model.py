"""Random-weight Llama models: the config of a preset, fast seeded initialisation, saving.

The model is built on the meta device (no memory, no init work), materialised empty in the target
dtype, then filled from one seeded `torch.Generator`. That keeps the 1B preset fast and within a
few GB of RAM, and makes the weights a pure function of the seed: parameters are filled in
`named_parameters()` order, independent of transformers' own init code.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.utils import logging as hf_logging


def config_kwargs(
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    rope_theta: float,
    tie_word_embeddings: bool,
    dtype: torch.dtype,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
) -> dict[str, Any]:
    """The keyword arguments a Llama-style transformers config (Llama, Qwen2, ...) takes for a shape."""
    return {
        "vocab_size": vocab_size, "hidden_size": hidden_size, "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size, "max_position_embeddings": max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(rope_theta)},
        "tie_word_embeddings": tie_word_embeddings, "initializer_range": 0.02, "dtype": dtype,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
    }


def build_config(**shape: Any) -> LlamaConfig:
    """A `LlamaConfig` with Llama 3 defaults (RMSNorm eps 1e-5, SiLU MLP, no biases); `shape` as
    `config_kwargs` takes it."""
    return LlamaConfig(**config_kwargs(**shape), rms_norm_eps=1e-5)


def init_weights_(model: LlamaForCausalLM, seed: int, std: float, embedding_std: float) -> None:
    """Fill every parameter in place from one generator seeded with `seed`.

    Norm scales get 1, the input embedding N(0, embedding_std), every other matrix N(0, std).
    Tied parameters appear once in `named_parameters()`, so they are drawn once.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    embedding = model.get_input_embeddings().weight
    with torch.no_grad():
        for _name, param in model.named_parameters():
            if param.ndim == 1:
                param.fill_(1.0)
            else:
                param_std = embedding_std if param is embedding else std
                param.normal_(mean=0.0, std=param_std, generator=generator)


def empty_model(model_class: Any, rotary_class: Any, config: Any) -> Any:
    """`model_class(config)` built on the meta device, then given uninitialised CPU storage in
    `config.dtype` (no time spent on an initialisation the caller overwrites); its RoPE buffers
    rebuilt (`rotary_class`: non-persistent, lost on the meta device) and its embeddings tied if asked."""
    with torch.device("meta"):
        model = model_class(config)
    model.to(dtype=config.dtype)
    model.to_empty(device="cpu")
    model.model.rotary_emb = rotary_class(config=config)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def create_model(config: LlamaConfig, seed: int, embedding_std: float) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` with seeded random weights in `config.dtype`, on the CPU.

    `embedding_std` sets how much the current token dominates the residual stream; see
    `TinyPreset.embedding_std` for why the presets differ.
    """
    model = empty_model(LlamaForCausalLM, LlamaRotaryEmbedding, config)
    init_weights_(model, seed=seed, std=config.initializer_range, embedding_std=embedding_std)
    model.eval()
    return model


def generation_config(bos_token_id: int, eos_token_ids: list[int], pad_token_id: int) -> GenerationConfig:
    """Greedy by default; generation stops at any of `eos_token_ids` (end of text, end of turn)."""
    return GenerationConfig(bos_token_id=bos_token_id, eos_token_id=eos_token_ids, pad_token_id=pad_token_id)


def save_model(model: PreTrainedModel, gen_config: GenerationConfig, out_dir: Path) -> None:
    """Write config.json, generation_config.json and model.safetensors (one shard) to `out_dir`."""
    model.generation_config = gen_config
    with _progress_bars_disabled():
        model.save_pretrained(out_dir)


@contextlib.contextmanager
def _progress_bars_disabled() -> Iterator[None]:
    """Silence transformers' progress bars (a one-shard write needs none), then restore them."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def count_parameters(model_dir: Path) -> int:
    """Number of stored parameters in `model_dir`'s safetensors files (tied weights count once)."""
    num_params = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            num_params += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return num_params
