"""Random-weight models of the Llama family's stock transformers classes (Llama, Mistral, Qwen2,
Qwen3) with a tiny model's tokenizer: what the checks that these classes run unchanged use.

Weights are transformers' own init, seeded, then made to matter where that init would hide a
difference: a wider input embedding (so greedy outputs vary with the prompt), random q/k/v biases
(Qwen2's start at zero) and random q/k norm weights (Qwen3's start at one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

# family -> (config class, model class, config defaults of the family's checks)
FAMILIES: dict[str, tuple[type, type[PreTrainedModel], dict[str, Any]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {}),
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "generation_config.json")


def build_family_model(family: str, tokenizer_dir: Path, out_dir: Path, seed: int = 0, **config: Any) -> Path:
    """Save a random-weight model of `family`'s stock class, shaped by `config` (hidden_size, ...),
    with the tokenizer (and special-token ids) of the tiny model in `tokenizer_dir`. Returns `out_dir`."""
    config_cls, model_cls, defaults = FAMILIES[family]
    base = json.loads((tokenizer_dir / "config.json").read_text())
    model_config = config_cls(vocab_size=base["vocab_size"], bos_token_id=base["bos_token_id"],
                              eos_token_id=base["eos_token_id"], pad_token_id=base.get("pad_token_id"),
                              **{**defaults, **config})
    torch.manual_seed(seed)
    model = model_cls(model_config)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        assert isinstance(embedding, torch.Tensor)
        embedding.normal_(0, 0.1)
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.1)
            elif "q_norm" in name or "k_norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(out_dir)
    for file in _TOKENIZER_FILES:
        if (tokenizer_dir / file).exists():
            (out_dir / file).write_bytes((tokenizer_dir / file).read_bytes())
    return out_dir
