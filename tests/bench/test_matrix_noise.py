"""The model matrix's yardsticks and router check (benchmarks/matrix_noise.py), on tiny models on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_engine
from llmserve.tiny.families import build_family_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from matrix_noise import RouterRecorder, cached_rows, moe_shape, router_check, router_verdict  # noqa: E402

_PROMPT = [5 + (7 * i) % 300 for i in range(40)]
_TOKENS = [11 + (13 * i) % 200 for i in range(8)]


def _family(family: str, tiny_model_dir: Path, tmp_path: Path) -> tuple[Path, Any]:
    model_dir = build_family_model(family, tiny_model_dir, tmp_path / family, seed=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    return model_dir, model.eval()


def _full_rows(model: Any) -> torch.Tensor:  # [len(_TOKENS), V]: the rows predicting each token
    with torch.inference_mode():
        logits = model(torch.tensor([_PROMPT + _TOKENS]), use_cache=False).logits[0]
    return logits[len(_PROMPT) - 1: -1].float().log_softmax(-1)


@pytest.mark.parametrize("family", ["llama", "mamba"])
def test_cached_rows_are_the_full_forward_in_float32(tiny_model_dir: Path, tmp_path: Path, family: str) -> None:
    """Teacher-forced through the model's own cache, the rows are its full forward's (to float32 rounding):
    the yardstick measures rounding, not a cache run wrongly."""
    _, model = _family(family, tiny_model_dir, tmp_path)
    rows = cached_rows(model, [_PROMPT], [[_TOKENS]])[(tuple(_PROMPT), tuple(_TOKENS))]
    torch.testing.assert_close(rows, _full_rows(model), atol=1e-4, rtol=0)


def test_the_recorder_reads_each_routers_choice(tiny_model_dir: Path, tmp_path: Path) -> None:
    _, model = _family("mixtral", tiny_model_dir, tmp_path)
    shape = moe_shape(model.config)
    assert shape == (4, 2)
    recorder = RouterRecorder(*shape).attach(model)
    with torch.inference_mode():
        output = model(torch.tensor([_PROMPT]), use_cache=False, output_router_logits=True)
    recorder.detach()
    rows = recorder.per_position(len(_PROMPT))
    assert isinstance(rows, dict) and len(rows) == model.config.num_hidden_layers
    for (logits, selection), own in zip(rows.values(), output.router_logits, strict=True):
        torch.testing.assert_close(logits, own.float())
        assert torch.equal(selection, own.float().topk(2).indices.sort(-1).values)
    assert moe_shape(LlamaConfig()) is None


def test_the_router_check_sees_a_flipped_expert(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Our path's engine against the reference: no flip when both compute the same (float32); with one
    layer's router weights negated in the engine's model, that router is reported at the worst position."""
    model_dir, model = _family("mixtral", tiny_model_dir, tmp_path)
    config = WorkerConfig(model_path=str(model_dir), dtype="float32", kv_cache_tokens=4096)
    engine: Any = build_engine(config, 0)
    engine_model = engine.runner.model
    same = router_check(model, engine, engine_model, _PROMPT, _TOKENS, 3, 0.0)
    assert same["routers"] == 2 and same["flipped_at_worst"] == [] and same["output_positions_with_flip"] == 0
    assert same["check_diff_at_worst"] < 1e-4 and same["selection_from"] == ["the router's own indices"]
    router = dict(engine_model.named_modules())["model.layers.0.mlp.gate"]
    with torch.no_grad():
        router.weight.neg_()
    flipped = router_check(model, engine, engine_model, _PROMPT, _TOKENS, 3, 0.0)
    assert [f["router"] for f in flipped["flipped_at_worst"]] == ["model.layers.0.mlp.gate"]
    assert flipped["output_positions_with_flip"] == len(_TOKENS) and flipped["check_diff_at_worst"] > 1e-3
    assert router_verdict(flipped).startswith("1/2 routers chose other experts at the worst position")
