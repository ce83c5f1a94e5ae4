"""The probe's second chance in half precision (llmserve/probe_precise.py): the model's own float32 forward."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_fast_engine
from llmserve.loading import load_model
from llmserve.probe import Reference, compute_reference, plan_probe
from llmserve.probe_noise import OwnNoise
from llmserve.probe_precise import Precise, upcast, why_no_float32
from llmserve.probe_run import probe_engine
from tests.test_probe import _ReplayEngine, _synthetic_reference


def _bf16(model_dir: Path) -> WorkerConfig:
    return WorkerConfig(model_path=str(model_dir), dtype="bfloat16", kv_cache_tokens=4096)


def test_upcast_restores_every_tensor_exactly(tiny_model_dir: Path) -> None:
    model = load_model(_bf16(tiny_model_dir)).model
    model.model.norm.weight.data = model.model.norm.weight.data.float()  # a module kept in float32
    before = {name: t.clone() for name, t in model.state_dict().items()}
    buffers = {name: b for name, b in model.named_buffers()}
    with upcast(model, torch.bfloat16):
        assert {p.dtype for p in model.parameters()} == {torch.float32}
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    assert model.model.norm.weight.dtype == torch.float32
    assert all(b is buffers[name] for name, b in model.named_buffers())  # the very same buffers back


def test_the_float32_rows_are_the_upcast_models_own(tiny_model_dir: Path) -> None:
    loaded = load_model(_bf16(tiny_model_dir))
    plan = plan_probe(loaded.tokenizer, None, loaded.max_model_len, loaded.device)
    reference = compute_reference(loaded.model, plan, loaded.device, loaded.dtype)
    precise = reference.precise
    assert precise is not None and reference.precise_note == ""
    assert reference.noise.float32 is not None and 0.0 < reference.noise.float32 < 0.25  # bfloat16 rounding of the tiny Llama, measured from float32
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}  # restored
    loaded.model.float()  # the same (rounded) weights, in float32 for good: its greedy path as reference
    exact = compute_reference(loaded.model, plan, loaded.device, torch.float32)
    for index in range(len(plan.prompts)):
        torch.testing.assert_close(precise.prompt_logprobs[index], exact.prompt_logprobs[index], atol=1e-5, rtol=0)
        if exact.tokens[index] == reference.tokens[index]:  # the same prefixes
            torch.testing.assert_close(precise.output_logprobs[index], exact.output_logprobs[index],
                                       atol=1e-5, rtol=0)


def _half(reference: Reference, shift: float) -> Reference:
    """`reference` as a bfloat16 reference whose rows sit `shift` nats off its float32 rows (kept as
    `precise`) on every token: an engine replaying the float32 rows is that far from it."""
    moved = dataclasses.replace(
        reference, dtype=torch.bfloat16, noise=OwnNoise(0.0, 0.0, "not measured (test)"),
        prompt_logprobs=tuple(rows + shift * torch.sign(torch.randn_like(rows)) for rows in reference.prompt_logprobs),
        output_logprobs=tuple(rows + shift * torch.sign(torch.randn_like(rows)) for rows in reference.output_logprobs))
    own = max(float((a - b).abs().max()) for a, b in zip(moved.prompt_logprobs + moved.output_logprobs,
                                                         reference.prompt_logprobs + reference.output_logprobs,
                                                         strict=True))
    return dataclasses.replace(moved, precise=Precise(reference.prompt_logprobs, reference.output_logprobs),
                               noise=dataclasses.replace(moved.noise, float32=own))


def test_an_engine_closer_to_float32_than_the_half_reference_passes() -> None:
    torch.manual_seed(0)
    exact = _synthetic_reference()
    half = _half(exact, 0.4)  # 0.4 off every row: beyond the bfloat16 floor of 0.25
    assert half.tolerance == 0.25 and half.precise_tolerance == pytest.approx(0.8)
    result = probe_engine(_ReplayEngine(exact, {}), half)  # the engine answers the float32 rows exactly
    assert result.passed and result.max_difference == 0.0 and result.tolerance == pytest.approx(0.8)
    assert _half(exact, 1.5).precise_tolerance == 2.0  # twice the cap of 1.0 at most
    assert result.summary().startswith("probe passed: against the bfloat16 reference log-probabilities off by 0.4 ")
    assert "against the model's own float32 forward max |logprob difference| 0.0e+00 vs 0.8 (twice its own " \
           "bfloat16 forward's 4.0e-01)" in result.describe()


def test_an_engine_far_from_both_fails_naming_both() -> None:
    torch.manual_seed(0)
    exact = _synthetic_reference()
    wrong = dataclasses.replace(exact, prompt_logprobs=tuple(r + 1.5 for r in exact.prompt_logprobs))
    half = _half(exact, 0.3)
    result = probe_engine(_ReplayEngine(wrong, {}), half)
    assert not result.passed
    assert result.cause.startswith("log-probabilities off by ")
    assert "; against the model's own float32 forward: log-probabilities off by 1.5 " in result.cause
    # Without float32 rows the cause says why there was no second comparison.
    bare = dataclasses.replace(half, precise=None, precise_note="no float32 forward (quantized weights)")
    assert probe_engine(_ReplayEngine(wrong, {}), bare).cause.endswith("(no float32 forward (quantized weights))")


def test_quantized_weights_get_no_float32_forward(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(_bf16(tiny_model_dir)).model
    assert why_no_float32(model, torch.bfloat16, torch.device("cpu")) == ""
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 1024})())
    assert why_no_float32(model, torch.bfloat16, torch.device("cpu")).startswith("a float32 copy needs ")
    monkeypatch.undo()
    model.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.int8),
                                                                  requires_grad=False)
    assert why_no_float32(model, torch.bfloat16, torch.device("cpu")) == "quantized weights"


def test_a_fast_engine_still_passes_against_the_half_reference_first(tiny_model_dir: Path) -> None:
    """The plain comparison decides where it passes; the summary shows the float32 yardstick too."""
    loaded = load_model(_bf16(tiny_model_dir))
    plan = plan_probe(loaded.tokenizer, None, loaded.max_model_len, loaded.device)
    reference = compute_reference(loaded.model, plan, loaded.device, loaded.dtype)
    result = probe_engine(build_fast_engine(loaded, _bf16(tiny_model_dir), "workers[0]"), reference)
    assert result.passed and result.float32 == "" and "float32 forward" not in result.summary()
    assert result.summary().endswith(f", own vs float32 {reference.noise.float32:.1e})")


def test_the_yardstick_covers_the_tokens_the_probe_compares(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Gemma 2 in bfloat16: its logit soft-cap leaves the prompt's own next tokens, often far down a row,
    rounded coarser than the top ones. The comparison reads those tokens, so the yardstick does too:
    over the top tokens alone the model's own bf16 forward looked 2.5x closer to float32 than it is."""
    from llmserve.probe_noise import top_difference
    from llmserve.tiny.families import build_family_model

    model_dir = build_family_model("gemma2", tiny_model_dir, tmp_path / "gemma2", seed=0)
    loaded = load_model(_bf16(model_dir))
    plan = plan_probe(loaded.tokenizer, 16, loaded.max_model_len, loaded.device)
    reference = compute_reference(loaded.model, plan, loaded.device, loaded.dtype)
    precise = reference.precise
    assert precise is not None
    top_only = max(top_difference(h, f) for hs, fs in zip(reference.prompt_logprobs + reference.output_logprobs,
                                                           precise.prompt_logprobs + precise.output_logprobs,
                                                           strict=True) for h, f in zip(hs, fs, strict=True))
    own = reference.noise.float32
    assert own is not None and own > 1.5 * top_only
    # The fast path (float32 attention) is as close to the float32 forward as the model's own bf16 one.
    rows = dataclasses.replace(reference, prompt_logprobs=precise.prompt_logprobs,
                               output_logprobs=precise.output_logprobs)
    result = probe_engine(build_fast_engine(loaded, _bf16(model_dir), "workers[0]"), rows)
    assert result.passed and result.max_difference <= own
