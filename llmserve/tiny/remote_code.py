"""A tiny `trust_remote_code` model: its own modeling file, its own attention, transformers' cache.

`build_remote_code_model(tokenizer_dir, out_dir, seed)` writes a folder that only loads with
`trust_remote_code=True`: `config.json` whose `auto_map` points at `modeling_tinyglm.py` (config
and model classes in one file), seeded random weights in `model.safetensors`, and the tokenizer of
the tiny model in `tokenizer_dir`. The model follows the ChatGLM pattern that FastChat serves:
a fused query-key-value projection, attention written with plain torch ops (rotary positions,
causal and padding masks built by hand) and a `DynamicCache` passed as `past_key_values`. It is
the kind of model llmserve's paged fast path cannot run, so the generic path serves it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

MODULE_NAME = "modeling_tinyglm"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "generation_config.json")

MODELING_SOURCE = '''"""TinyGLM: a small decoder with hand-written attention over transformers' DynamicCache."""

import dataclasses

import torch
from torch import nn
from transformers import DynamicCache, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

# The output's cache field is `cache` from transformers 5.2x, `past_key_values` before.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


class TinyGLMConfig(PretrainedConfig):
    model_type = "tinyglm"

    def __init__(self, vocab_size=4096, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=2048, rope_theta=10000.0, layernorm_epsilon=1e-5, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.layernorm_epsilon = layernorm_epsilon
        super().__init__(**kwargs)


def rotate(x, positions, theta):
    """x [B, H, Q, D] rotated by its positions [B, Q] (rotate-half convention)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
    angles = positions.float()[:, None, :, None] * freqs  # [B, 1, Q, half]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.theta = config.rope_theta
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden, positions, mask, cache):
        batch, length, _ = hidden.shape
        qkv = self.query_key_value(hidden).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, Q, D]
        q, k = rotate(q, positions, self.theta), rotate(k, positions, self.theta)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / self.head_dim ** 0.5  # [B, H, Q, K]
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)
        return self.dense(out.transpose(1, 2).reshape(batch, length, -1))


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.self_attention = SelfAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = nn.Sequential(nn.Linear(config.hidden_size, 4 * config.hidden_size), nn.GELU(),
                                 nn.Linear(4 * config.hidden_size, config.hidden_size))

    def forward(self, hidden, positions, mask, cache):
        hidden = hidden + self.self_attention(self.input_layernorm(hidden), positions, mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class TinyGLMPreTrainedModel(PreTrainedModel):
    config_class = TinyGLMConfig
    base_model_prefix = "transformer"

    def _init_weights(self, module):
        pass  # weights come from the checkpoint


class TinyGLMForCausalLM(TinyGLMPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.output_layer = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding

    def get_output_embeddings(self):
        return self.output_layer

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, return_dict=None, **kwargs):
        if past_key_values is None:
            past_key_values = kwargs.pop("cache", None)  # newer `generate` passes it under this name
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        batch, length = input_ids.shape
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=input_ids.device).expand(batch, length)
        if attention_mask is None:
            attention_mask = torch.ones(batch, past + length, dtype=torch.long, device=input_ids.device)
        query_at = torch.arange(past, past + length, device=input_ids.device)[:, None]
        key_at = torch.arange(past + length, device=input_ids.device)[None, :]
        mask = (key_at <= query_at)[None] & attention_mask.bool()[:, None, :]  # [B, Q, K]
        hidden = self.embedding(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, position_ids, mask, past_key_values if use_cache else None)
        logits = self.output_layer(self.final_layernorm(hidden))
        return CausalLMOutputWithPast(logits=logits, **{_CACHE_FIELD: past_key_values if use_cache else None})
'''


def _load_module(path: Path) -> Any:
    """The written modeling file as a module (without transformers' remote-code loader)."""
    spec = importlib.util.spec_from_file_location(f"llmserve_tiny_{MODULE_NAME}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _random_model(module: Any, settings: dict[str, Any], seed: int) -> torch.nn.Module:
    """Seeded random weights, wide enough that greedy outputs follow the prompt."""
    torch.manual_seed(seed)
    model = module.TinyGLMForCausalLM(module.TinyGLMConfig(**settings))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and not name.endswith("bias"):
                param.fill_(1.0)
            elif param.ndim == 1:
                param.normal_(0.0, 0.1)
            else:
                param.normal_(0.0, 0.5 if name == "embedding.weight" else 0.08)
    return model


def build_remote_code_model(tokenizer_dir: Path, out_dir: Path, seed: int = 0, hidden_size: int = 64,
                            num_layers: int = 2, num_heads: int = 4) -> Path:
    """Write a TinyGLM remote-code model with the tiny model's tokenizer from `tokenizer_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / f"{MODULE_NAME}.py"
    source.write_text(MODELING_SOURCE, encoding="utf-8")
    base = json.loads((Path(tokenizer_dir) / "config.json").read_text(encoding="utf-8"))
    settings = {"vocab_size": base["vocab_size"], "hidden_size": hidden_size, "num_hidden_layers": num_layers,
                "num_attention_heads": num_heads, "max_position_embeddings": 2048, "rope_theta": 10000.0,
                "layernorm_epsilon": 1e-5, "bos_token_id": base.get("bos_token_id"),
                "eos_token_id": base.get("eos_token_id"), "pad_token_id": base.get("pad_token_id")}
    module = _load_module(source)
    try:
        model = _random_model(module, settings, seed)
    finally:
        sys.modules.pop(module.__name__, None)  # loaded for this build only
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = {**settings, "model_type": "tinyglm", "architectures": ["TinyGLMForCausalLM"], "dtype": "float32",
              "auto_map": {"AutoConfig": f"{MODULE_NAME}.TinyGLMConfig",
                           "AutoModelForCausalLM": f"{MODULE_NAME}.TinyGLMForCausalLM"}}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for file in _TOKENIZER_FILES:
        if (Path(tokenizer_dir) / file).exists():
            (out_dir / file).write_bytes((Path(tokenizer_dir) / file).read_bytes())
    return out_dir
