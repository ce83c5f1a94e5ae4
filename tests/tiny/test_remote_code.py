"""The tiny remote-code model: loads only with trust_remote_code, and its cached generation equals
its own uncached forward (so it is a fair reference for the generic path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmserve.config import parse_config
from llmserve.errors import ConfigError
from llmserve.loading import load_model
from llmserve.tiny.remote_code import build_remote_code_model


@pytest.fixture(scope="module")
def remote_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_remote_code_model(tiny_model_dir, tmp_path_factory.mktemp("remote"), seed=0)


def test_it_loads_only_with_trust_remote_code(remote_dir: Path) -> None:
    worker = {"model_path": str(remote_dir), "model_names": ["m"], "dtype": "float32"}
    with pytest.raises(ConfigError, match="config.json"):
        load_model(parse_config({"workers": [worker]}).workers[0])
    loaded = load_model(parse_config({"workers": [{**worker, "trust_remote_code": True}]}).workers[0])
    assert type(loaded.model).__name__ == "TinyGLMForCausalLM" and loaded.vocab_size == 4096


def test_cached_generation_equals_the_uncached_forward(remote_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(remote_dir, trust_remote_code=True, dtype=torch.float32).eval()
    prompt = [17, 400, 1023, 9, 77, 3000]
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0].tolist()
        greedy = model(torch.tensor([out[:-1]]), use_cache=False).logits[0, len(prompt) - 1:].argmax(-1).tolist()
    assert greedy == out[len(prompt):]
    assert len(set(out[len(prompt):])) > 8, "outputs follow the context, not one attractor token"


def test_same_seed_same_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = build_remote_code_model(tiny_model_dir, tmp_path / "a", seed=4)
    b = build_remote_code_model(tiny_model_dir, tmp_path / "b", seed=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
