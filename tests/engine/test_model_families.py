"""Stock Hugging Face classes of the Llama family run unchanged over the paged cache:
greedy outputs are token-exact against `model.generate` for Llama, Mistral, Qwen2 (attention
biases) and Qwen3 (q/k norms), built by `llmserve.tiny.families`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_engine
from llmserve.engine.request import SamplingParams
from llmserve.tiny.families import FAMILIES, build_family_model

SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024}
PER_FAMILY = {"qwen3": {"head_dim": 16}}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_dir(request, tiny_model_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(request.param)
    return build_family_model(request.param, tiny_model_dir, out, seed=1, **SHAPE, **PER_FAMILY.get(request.param, {}))


def test_greedy_outputs_match_generate(family_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(family_dir)
    model = AutoModelForCausalLM.from_pretrained(family_dir, dtype=torch.float32)
    prompts = [tokenizer.encode(t) for t in ("def f(x):", "Hello there " * 12, "a", "import os\nimport sys")]
    lengths = [12, 20, 9, 15]
    with torch.inference_mode():
        expected = [model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):].tolist()
                    for ids, n in zip(prompts, lengths, strict=True)]
    engine = build_engine(WorkerConfig(model_path=str(family_dir), dtype="float32", kv_cache_tokens=4096,
                                       block_size=8, max_num_batched_tokens=32), 0)
    for i, (ids, n) in enumerate(zip(prompts, lengths, strict=True)):
        engine.add(i, ids, SamplingParams(max_tokens=n, temperature=0.0))
    got: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    while engine.has_work:
        for out in engine.step():
            got[out.seq_id] += out.token_ids
    assert [got[i] for i in range(len(prompts))] == expected


def test_sliding_window_models_are_capped_at_their_window(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = MistralConfig(vocab_size=len(tokenizer), sliding_window=64, **SHAPE)
    MistralForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, tmp_path / name)
    engine = build_engine(WorkerConfig(model_path=str(tmp_path), dtype="float32", kv_cache_tokens=4096), 0)
    assert engine.max_model_len == 64
