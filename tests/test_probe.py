"""The load-time probe (llmserve/probe.py): an engine's logprobs against the model's own forward."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config

from llmserve import probe, probe_noise
from llmserve.config import WorkerConfig
from llmserve.engine import attention
from llmserve.engine.builder import build_fast_engine
from llmserve.engine.engine import SequenceOutput
from llmserve.engine.request import SamplingParams, TokenLogprob
from llmserve.loading import LoadedModel, load_model
from llmserve.probe import (
    MAX_PROMPT_TOKENS,
    MAX_PROMPT_TOKENS_CPU,
    MAX_TOLERANCES,
    NUM_DECODE_STEPS,
    TOLERANCES,
    ProbePlan,
    Reference,
    compared_positions,
    compute_reference,
    plan_probe,
    smallest_window,
)
from llmserve.probe_noise import NUM_TOP_LOGPROBS, OwnNoise, own_cache_disagreement
from llmserve.probe_run import probe_engine
from llmserve.tiny.families import build_family_model


def _config(model_dir: Path) -> WorkerConfig:
    return WorkerConfig(model_path=str(model_dir), dtype="float32", kv_cache_tokens=4096)


def _loaded_and_reference(model_dir: Path) -> tuple[LoadedModel, Reference]:
    loaded = load_model(_config(model_dir))
    plan = plan_probe(loaded.tokenizer, None, loaded.max_model_len, loaded.device)
    return loaded, compute_reference(loaded.model, plan, loaded.device, loaded.dtype)


def test_the_fast_path_passes_the_probe_on_the_tiny_llama(tiny_model_dir: Path) -> None:
    loaded, reference = _loaded_and_reference(tiny_model_dir)
    engine = build_fast_engine(loaded, _config(tiny_model_dir), "workers[0]")
    result = probe_engine(engine, reference)
    assert result.passed, result.cause
    assert result.max_difference < 1e-5 and result.tolerance == 5e-3
    assert result.is_chunked and reference.plan.chunk_tokens == 20  # two 40-token prompts, chunks of 20
    assert result.num_positions == 2 * (39 + NUM_DECODE_STEPS + 1)  # every prompt position and output token
    assert result.describe().startswith("probe passed (2 prompts of 40 tokens, prefill in chunks of 20, ")
    # The probe leaves the engine as it found it: nothing running, no block held, the budget restored.
    assert not engine.has_work and engine.pool.usage == 0.0
    assert engine.scheduler.config.max_num_batched_tokens == 2048


def test_the_reference_is_the_models_own_greedy_forward(tiny_model_dir: Path) -> None:
    loaded, reference = _loaded_and_reference(tiny_model_dir)
    for index, prompt in enumerate(reference.plan.prompts):
        ids = torch.tensor([prompt])
        generated = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NUM_DECODE_STEPS + 1,
                                          do_sample=False, pad_token_id=0)
        assert tuple(generated[0, len(prompt):].tolist()) == reference.tokens[index]
        with torch.no_grad():
            full = torch.log_softmax(loaded.model(ids).logits[0].float(), dim=-1)  # [L, V]
        positions = list(reference.prompt_positions[index])
        assert positions == list(range(len(prompt) - 1))
        torch.testing.assert_close(reference.prompt_logprobs[index], full[positions], atol=1e-5, rtol=0)
        torch.testing.assert_close(reference.output_logprobs[index][0], full[-1], atol=1e-5, rtol=0)


def test_a_wrong_attention_scale_fails_the_probe(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded, reference = _loaded_and_reference(tiny_model_dir)
    paged = attention.paged_attention
    # A fast path that drops the 1 / sqrt(D) scale of the scores: the query scaled up by sqrt(D).
    monkeypatch.setattr(attention, "paged_attention",
                        lambda query, *args, **kwargs: paged(query * query.shape[-1] ** 0.5, *args, **kwargs))
    result = probe_engine(build_fast_engine(loaded, _config(tiny_model_dir), "workers[0]"), reference)
    assert not result.passed
    assert result.cause.startswith("log-probabilities off by ") and "of probe prompt 0 (tolerance 0.005)" in result.cause
    assert "\n" not in result.cause and "probe FAILED" in result.describe()


def test_probe_prompts_run_past_the_smallest_window(tiny_model_dir: Path) -> None:
    loaded = load_model(_config(tiny_model_dir))
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    plan = plan_probe(loaded.tokenizer, 64, 4096, cpu)
    assert plan.num_prompt_tokens == 64 + 24 and plan.covers_window and plan.chunk_tokens == 44
    assert {len(p) for p in plan.prompts} == {88} and plan.prompts[0] != plan.prompts[1]
    assert plan_probe(loaded.tokenizer, None, 4096, cpu).num_prompt_tokens == 40
    assert plan_probe(loaded.tokenizer, 4096, 32768, gpu).num_prompt_tokens == 4096 + 24  # Mistral-7B's window
    # Bounded on big windows (more on GPUs than on the CPU), and it says so.
    bounded = plan_probe(loaded.tokenizer, 8192, 131072, gpu)
    assert bounded.num_prompt_tokens == MAX_PROMPT_TOKENS and not bounded.covers_window
    assert plan_probe(loaded.tokenizer, 4096, 32768, cpu).num_prompt_tokens == MAX_PROMPT_TOKENS_CPU
    assert plan_probe(loaded.tokenizer, 64, 30, cpu).num_prompt_tokens == 30 - NUM_DECODE_STEPS - 1  # the context


def test_long_prompts_compare_a_bounded_set_of_positions() -> None:
    kept = compared_positions(4000, 2000)
    assert len(kept) == 16 + 32 + 48
    assert {0, 15, 1984, 2000, 2015, 3951, 3998} <= set(kept) and 3999 not in kept
    assert compared_positions(40, 20) == list(range(39))


def test_smallest_window_reads_the_config() -> None:
    assert smallest_window(LlamaConfig()) is None
    assert smallest_window(MistralConfig(sliding_window=96)) == 96
    assert smallest_window(Qwen2Config(sliding_window=96, use_sliding_window=False)) is None


# ---- the comparison's rules, on a synthetic reference ---------------------------------------------------------

_V = 16


def _synthetic_reference() -> Reference:
    """Two prompts of 3 tokens; at output token 1 of prompt 0 tokens 7 and 8 are a near-tie (0.001 apart),
    and token 9 is 2 nats below 7."""
    generator = torch.Generator().manual_seed(0)

    def rows(n: int) -> torch.Tensor:
        return torch.log_softmax(torch.randn(n, _V, generator=generator) * 3, dim=-1)

    outputs = [rows(NUM_DECODE_STEPS + 1), rows(NUM_DECODE_STEPS + 1)]
    logits = torch.zeros(_V)
    logits[7], logits[8], logits[9] = 5.0, 4.999, 3.0
    outputs[0][1] = torch.log_softmax(logits, dim=-1)
    tokens = tuple(tuple(int(i) for i in out.argmax(dim=-1)) for out in outputs)
    plan = ProbePlan(prompts=((1, 2, 3), (4, 5, 6)), chunk_tokens=2, window=None)
    return Reference(plan, torch.float32, ((0, 1), (0, 1)), (rows(2), rows(2)), tokens, tuple(outputs))


class _ReplayEngine:
    """Answers the probe with the reference's own log-probabilities, choosing `swaps[(prompt, step)]`
    instead of the reference's token where given: the comparison's rules, apart from any model."""

    vocab_size = _V

    def __init__(self, reference: Reference, swaps: dict[tuple[int, int], int]) -> None:
        self.reference = reference
        self.swaps = swaps
        self.added: list[tuple[int, list[int], SamplingParams]] = []

    def add(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        self.added.append((seq_id, prompt_ids, params))

    def step(self) -> list[SequenceOutput]:
        outputs = []
        for index, (seq_id, prompt, _) in enumerate(self.added):
            prompt_rows, rows = self.reference.prompt_logprobs[index], self.reference.output_logprobs[index]
            prompt_logprobs: list[TokenLogprob | None] = [None] + [
                _entry(prompt[p + 1], prompt_rows[p]) for p in range(len(prompt) - 1)]
            tokens = [self.swaps.get((index, step), token) for step, token in enumerate(self.reference.tokens[index])]
            logprobs = [_entry(token, rows[step]) for step, token in enumerate(tokens)]
            outputs.append(SequenceOutput(seq_id, "", tokens, logprobs, "length", len(prompt), len(tokens),
                                          prompt_logprobs=prompt_logprobs))
        self.added = []
        return outputs

    def abort(self, seq_id: int) -> Any:
        return None


def _entry(token: int, row: torch.Tensor) -> TokenLogprob:
    values, ids = row.topk(5)
    return TokenLogprob(token, float(row[token]), list(zip(ids.tolist(), values.tolist(), strict=True)))


def test_a_near_tie_is_accepted_and_ends_that_sequences_comparison() -> None:
    reference = _synthetic_reference()
    assert reference.tokens[0][1] == 7
    result = probe_engine(_ReplayEngine(reference, {(0, 1): 8}), reference)
    assert result.passed and result.num_near_ties == 1 and result.max_difference == 0.0
    assert result.num_positions == 2 + 2 + 2 + NUM_DECODE_STEPS + 1  # prompt 0 stops after its near-tie


def test_a_greedy_token_beyond_the_tolerance_fails() -> None:
    reference = _synthetic_reference()
    result = probe_engine(_ReplayEngine(reference, {(0, 1): 9}), reference)
    assert not result.passed
    assert result.cause.startswith("greedy token 9 instead of 7 at output token 1 of probe prompt 0")


def _bf16_reference(model_dir: Path, attention: str = "eager") -> tuple[LoadedModel, Reference]:
    """The bfloat16 reference as the builder computes it, with `attention` set first."""
    loaded = load_model(WorkerConfig(model_path=str(model_dir), dtype="bfloat16", kv_cache_tokens=4096))
    _set_attention(loaded, attention)
    plan = plan_probe(loaded.tokenizer, smallest_window(loaded.model.config), loaded.max_model_len, loaded.device)
    return loaded, compute_reference(loaded.model, plan, loaded.device, loaded.dtype)


def _attention(loaded: LoadedModel) -> str:
    model: Any = loaded.model
    return str(model.config._attn_implementation)


def _set_attention(loaded: LoadedModel, name: str) -> None:
    model: Any = loaded.model
    model.set_attn_implementation(name)


def _clamped(noise: float) -> float:
    return min(MAX_TOLERANCES[torch.bfloat16], max(TOLERANCES[torch.bfloat16], 2 * noise))


def test_half_precision_tolerance_follows_the_models_own_cached_disagreement(tiny_model_dir: Path) -> None:
    """In bfloat16 the reference measures its own cached forward against its full forwards; the
    tolerance is twice the larger yardstick, kept between the floor and the cap."""
    loaded, reference = _bf16_reference(tiny_model_dir, attention="sdpa")
    noise = reference.noise
    assert 0.0 < noise.cached_vs_full < 1.0  # bfloat16 rounding differs between the two orders
    assert noise.cached_vs_full == own_cache_disagreement(loaded.model, reference, loaded.device)
    assert reference.tolerance == _clamped(max(noise.cached_vs_full, noise.implementations))


def _sdpa_vs_eager(references: tuple[Reference, Reference]) -> float:
    """The largest difference over the first reference's top log-probabilities between two references'
    rows at the compared prompt positions and the first output token."""
    first, second = references
    worst = 0.0
    for index in range(len(first.plan.prompts)):
        rows = zip([*first.prompt_logprobs[index], first.output_logprobs[index][0]],
                   [*second.prompt_logprobs[index], second.output_logprobs[index][0]], strict=True)
        for a, b in rows:
            top = a.topk(NUM_TOP_LOGPROBS).indices
            worst = max(worst, float((b[top] - a[top]).abs().max()))
    return worst


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_half_precision_measures_eager_against_sdpa_and_restores_the_attention(
        tiny_model_dir: Path, attention: str) -> None:
    """The second yardstick: the reference's attention implementation against transformers' other one
    on the same prompts, equal to the two references' own rows compared; the model keeps its attention."""
    loaded, reference = _bf16_reference(tiny_model_dir, attention)
    other = "sdpa" if attention == "eager" else "eager"
    assert _attention(loaded) == attention
    noise = reference.noise
    assert noise.implementations_note == f"{attention} vs {other}"
    assert 0.0 < noise.implementations < 0.25  # bfloat16 rounding of two kernels, on the tiny Llama
    _set_attention(loaded, other)
    plan = reference.plan
    other_reference = compute_reference(loaded.model, plan, loaded.device, torch.float32)  # no yardsticks
    assert noise.implementations == _sdpa_vs_eager((reference, other_reference))
    assert reference.tolerance == _clamped(noise.largest)


def test_eager_vs_sdpa_widens_the_tolerance_of_gemma3(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Random Gemma 3 in bfloat16: its own eager forward agrees with its cached forward exactly on the
    CPU, its SDPA forward is ~0.5 away (0.52 on the H200): the tolerance grows to twice that."""
    model_dir = build_family_model("gemma3", tiny_model_dir, tmp_path / "gemma3", seed=0)
    _, reference = _bf16_reference(model_dir)
    noise = reference.noise
    assert noise.implementations_note == "eager vs sdpa" and 0.25 < noise.implementations < 1.0
    assert reference.tolerance == _clamped(noise.implementations) > 2 * TOLERANCES[torch.bfloat16]


@pytest.mark.parametrize(("family", "why"), [
    ("gemma2", "its attention has a soft-cap, which transformers' sdpa does not take"),
    ("gpt_oss", "its attention has attention sinks, which transformers' sdpa does not take"),
    ("bloom", "no layer calls transformers' attention interface"),
])
def test_eager_vs_sdpa_is_not_measured_where_sdpa_is_not_the_same_attention(
        tiny_model_dir: Path, tmp_path: Path, family: str, why: str) -> None:
    """A soft-cap or sinks that SDPA drops would measure the missing feature, not rounding (and let a fast
    path that drops it too pass); a model with its own attention code would compare itself with itself."""
    model_dir = build_family_model(family, tiny_model_dir, tmp_path / family, seed=0)
    loaded, reference = _bf16_reference(model_dir)
    assert reference.noise.implementations == 0.0
    assert reference.noise.implementations_note == f"not measured ({why})"
    assert _attention(loaded) == "eager"


def test_the_attention_is_restored_when_the_other_implementation_fails(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(model: Any, *args: Any) -> float:
        assert model.config._attn_implementation == "sdpa"
        raise RuntimeError("no kernel\nfor this")

    monkeypatch.setattr(probe_noise, "_worst_difference", fail)
    loaded, reference = _bf16_reference(tiny_model_dir)
    assert reference.noise.implementations_note == "not measured (sdpa forward raised RuntimeError: no kernel)"
    assert reference.noise.implementations == 0.0 and _attention(loaded) == "eager"


def test_float32_measures_no_yardstick(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 is unchanged: neither yardstick runs, the tolerance is the fixed 5e-3, the log line names none."""
    def never(*args: Any) -> Any:
        raise AssertionError("a yardstick ran in float32")

    monkeypatch.setattr(probe, "own_implementations_disagreement", never)
    monkeypatch.setattr(probe, "own_cache_disagreement", never)
    loaded, reference = _loaded_and_reference(tiny_model_dir)
    assert reference.noise == OwnNoise() and reference.tolerance == TOLERANCES[torch.float32]
    result = probe_engine(build_fast_engine(loaded, _config(tiny_model_dir), "workers[0]"), reference)
    assert result.passed and "own " not in result.describe() and "sdpa" not in result.describe()


def test_the_log_line_reports_both_yardsticks(tiny_model_dir: Path) -> None:
    reference = dataclasses.replace(_synthetic_reference(), dtype=torch.bfloat16,
                                    noise=OwnNoise(0.0625, 0.5, "eager vs sdpa"))
    result = probe_engine(_ReplayEngine(reference, {}), reference)
    assert result.passed and result.tolerance == 1.0
    assert "vs 1 for bfloat16 (own cached vs full 6.2e-02, own eager vs sdpa 5.0e-01), " in result.describe()
    assert result.summary() == ("probe passed: max |logprob difference| 0.0e+00 vs 1 for bfloat16 (own cached vs full "
                                "6.2e-02, own eager vs sdpa 5.0e-01)")
    unmeasured = OwnNoise(0.0625, 0.0, "not measured (no layer calls transformers' attention interface)")
    assert unmeasured.describe() == ("own cached vs full 6.2e-02, eager vs sdpa not measured (no layer calls "
                                     "transformers' attention interface)")


@pytest.mark.parametrize("family", ["mamba", "gemma3"])
def test_the_cached_yardstick_measures_rounding_only(tiny_model_dir: Path, tmp_path: Path, family: str) -> None:
    """In float32 the model's own cached forward equals its full one: the yardstick measures rounding,
    not a cache run wrongly (Mamba decoded with a mask was 9.5 off its full forward even in float32)."""
    model_dir = build_family_model(family, tiny_model_dir, tmp_path / family, seed=0)
    loaded, reference = _loaded_and_reference(model_dir)
    assert own_cache_disagreement(loaded.model, reference, loaded.device) < 1e-4
