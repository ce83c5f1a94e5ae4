"""Models for the generic path's tests (random weights, the tiny model's tokenizer), and helpers.

Mamba (no attention at all), GraniteMoeHybrid (Granite-4-H's class: Mamba-2 and attention
layers), the remote-code TinyGLM, and the plain tiny Llama forced onto the generic path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GraniteMoeHybridConfig,
    GraniteMoeHybridForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedModel,
)

from llmserve.config import WorkerConfig, parse_config
from llmserve.generic.builder import build_generic_engine
from llmserve.generic.engine import GenericEngine
from llmserve.loading import load_model
from llmserve.templates import resolve_chat_template
from llmserve.tiny.remote_code import build_remote_code_model

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "generation_config.json")
MODELS = ("mamba", "hybrid", "remote", "llama")


def _save(model: PreTrainedModel, tokenizer_dir: Path, out_dir: Path, weight_std: float = 0.08) -> Path:
    """Random weights wide enough that greedy outputs vary with the prompt, then saved with the tokenizer."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.3 if "embed" in name else weight_std)
    model.save_pretrained(out_dir)
    for file in _TOKENIZER_FILES:
        if (tokenizer_dir / file).exists():
            (out_dir / file).write_bytes((tokenizer_dir / file).read_bytes())
    return out_dir


def _special_ids(tokenizer_dir: Path) -> dict[str, Any]:
    base = json.loads((tokenizer_dir / "config.json").read_text())
    return {"vocab_size": base["vocab_size"], "bos_token_id": base["bos_token_id"],
            "eos_token_id": base["eos_token_id"], "pad_token_id": base.get("pad_token_id")}


@pytest.fixture(scope="session")
def mamba_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    config = MambaConfig(hidden_size=64, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
                         **_special_ids(tiny_model_dir))
    return _save(MambaForCausalLM(config), tiny_model_dir, tmp_path_factory.mktemp("mamba"), weight_std=0.2)


@pytest.fixture(scope="session")
def hybrid_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(2)
    config = GraniteMoeHybridConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        layer_types=["linear_attention", "attention", "linear_attention", "attention"], mamba_n_heads=8,
        mamba_d_head=16, mamba_d_state=16, mamba_n_groups=1, mamba_expand=2, num_local_experts=0,
        shared_intermediate_size=128, max_position_embeddings=2048, **_special_ids(tiny_model_dir))
    return _save(GraniteMoeHybridForCausalLM(config), tiny_model_dir, tmp_path_factory.mktemp("hybrid"))


@pytest.fixture(scope="session")
def remote_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_remote_code_model(tiny_model_dir, tmp_path_factory.mktemp("remote"), seed=3)


@pytest.fixture(scope="session")
def model_dirs(tiny_model_dir: Path, mamba_dir: Path, hybrid_dir: Path, remote_dir: Path) -> dict[str, Path]:
    return {"mamba": mamba_dir, "hybrid": hybrid_dir, "remote": remote_dir, "llama": tiny_model_dir}


def worker_config(model_dir: Path, **overrides: Any) -> WorkerConfig:
    worker = {"model_path": str(model_dir), "model_names": ["m"], "dtype": "float32", "max_num_seqs": 32,
              "trust_remote_code": (model_dir / "modeling_tinyglm.py").exists(), **overrides}
    return parse_config({"workers": [worker]}).workers[0]


def generic_engine_factory(config: WorkerConfig, index: int) -> GenericEngine:
    """A worker's engine on the generic path (what the builder's path choice will call)."""
    path = f"workers[{index}]"
    loaded = load_model(config, path)
    loaded.tokenizer.chat_template = resolve_chat_template(config.chat_template, loaded.tokenizer)
    return build_generic_engine(loaded, config, path)


def load_reference(model_dir: Path) -> Any:
    trust = (model_dir / "modeling_tinyglm.py").exists()
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=trust).eval()


def generate(model: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy tokens of the model's own `generate`, batch 1."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt_ids):].tolist()


def forward_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    """[L, V] logprobs of the model's own forward over `ids`, no cache (row p predicts token p + 1)."""
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([ids]), use_cache=False).logits[0].float(), dim=-1)
