"""One request can never fail another's: a poisoned sequence joins a running batch of streams and
every innocent stream finishes token-exact against a run without it.

Two kinds of poison: a failure injected where the batch is one (the forward, the sampler, the
read-back) whenever the marked sequence is in the step, which the engine must isolate by undoing
the step and rerunning its sequences apart; and values passed straight to the engine that no
batched tensor could hold, which `add` must refuse for that sequence alone.
"""

from __future__ import annotations

import pytest
import torch

from llmserve.config import WorkerConfig
from llmserve.engine import engine as engine_module
from llmserve.engine.builder import build_engine
from llmserve.engine.request import SamplingParams

PROMPTS = [
    "Hello there, how are you today?",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Once upon a time",
    "import os\nimport sys\n\nclass Config:\n    pass\n",
    "1, 2, 3, 4, 5, 6, 7",
    "SELECT * FROM users WHERE",
]
# The innocents: greedy, seeded samples with filters, penalties, logprobs and a bias, arriving over
# the first steps so the batch is running when the poison joins it.
INNOCENT = [
    SamplingParams(max_tokens=24, temperature=0.0),
    SamplingParams(max_tokens=20, temperature=0.8, top_p=0.9, top_k=40, seed=11),
    SamplingParams(max_tokens=22, temperature=0.0, frequency_penalty=1.2),
    SamplingParams(max_tokens=18, temperature=1.0, seed=5, logprobs=2),
    SamplingParams(max_tokens=16, temperature=0.0, logit_bias=((7, 3.0),)),
    SamplingParams(max_tokens=21, temperature=0.7, min_p=0.05, seed=3, presence_penalty=0.5),
    SamplingParams(max_tokens=15, temperature=0.0),
]
ARRIVAL_STEPS = [0, 0, 0, 1, 1, 2, 2]
POISON_ID = 99
POISON_STEP = 4
POISON_PARAMS = SamplingParams(max_tokens=12, temperature=0.9, seed=1)


def _engine(tiny_model_dir, async_scheduling: bool):
    engine = build_engine(WorkerConfig(model_path=str(tiny_model_dir), dtype="float32", kv_cache_tokens=4096,
                                       block_size=8), 0)
    engine.async_scheduling = async_scheduling  # its logic runs anywhere; the builder enables it on CUDA
    return engine


def _arrivals(prompt_ids, poison: tuple[list[int], SamplingParams] | None):
    arrivals: dict[int, list] = {}
    for i, (ids, params) in enumerate(zip(prompt_ids, INNOCENT, strict=True)):
        arrivals.setdefault(ARRIVAL_STEPS[i], []).append((i, ids, params))
    if poison is not None:
        arrivals.setdefault(POISON_STEP, []).append((POISON_ID, *poison))
    return arrivals


def _run(engine, arrivals) -> tuple[dict[int, list[int]], dict[int, object]]:
    """Step the engine, adding requests at their steps; (tokens, final event) per sequence."""
    tokens: dict[int, list[int]] = {}
    finals: dict[int, object] = {}
    step = 0
    while engine.has_work or any(k >= step for k in arrivals):
        for seq_id, ids, params in arrivals.get(step, []):
            engine.add(seq_id, ids, params)
            tokens[seq_id] = []
        for out in engine.step():
            tokens[out.seq_id] += out.token_ids
            if out.finish_reason is not None:
                finals[out.seq_id] = out
        step += 1
        assert step < 500
    return tokens, finals


@pytest.fixture(scope="module")
def prompt_ids(tiny_model_dir) -> list[list[int]]:
    tokenizer = _engine(tiny_model_dir, False).tokenizer
    return [tokenizer.encode(p) for p in PROMPTS]


@pytest.fixture(scope="module")
def undisturbed(tiny_model_dir, prompt_ids) -> dict[int, list[int]]:
    tokens, finals = _run(_engine(tiny_model_dir, False), _arrivals(prompt_ids, None))
    assert all(f.finish_reason in ("stop", "length") for f in finals.values())
    return tokens


def _assert_isolated(engine, tokens, finals, undisturbed) -> None:
    for seq_id, expected in undisturbed.items():
        assert tokens[seq_id] == expected, f"innocent stream {seq_id} differs"
        assert finals[seq_id].error is None
    assert engine.pool.num_free_blocks == engine.pool.num_blocks
    assert not engine.has_work and not engine._tracked


def _poisoned(seqs) -> bool:
    return any(s.seq_id == POISON_ID for s in seqs)


def _inject_in_forward(monkeypatch, engine, calls: list[int]) -> None:
    runner = engine.runner
    execute = runner.execute

    def failing_execute(scheduled, *args, **kwargs):
        if _poisoned(item.seq for item in scheduled):
            calls.append(1)
            raise RuntimeError("injected forward failure")
        return execute(scheduled, *args, **kwargs)

    monkeypatch.setattr(runner, "execute", failing_execute)


def _inject_in_sampler(monkeypatch, engine, calls: list[int]) -> None:
    """The sampler draws (seeded generators advance) and then fails: the undo must rewind them."""
    seen: list = []
    real_build, real_sample, real_on_device = (engine_module.build_sampling_batch, engine_module.sample,
                                               engine_module.sample_on_device)

    def build(seqs, *args, **kwargs):
        seen[:] = list(seqs)
        return real_build(seqs, *args, **kwargs)

    def failing(real):
        def wrapped(*args, **kwargs):
            result = real(*args, **kwargs)
            if _poisoned(seen):
                calls.append(1)
                raise RuntimeError("injected sampler failure")
            return result
        return wrapped

    monkeypatch.setattr(engine_module, "build_sampling_batch", build)
    monkeypatch.setattr(engine_module, "sample", failing(real_sample))
    monkeypatch.setattr(engine_module, "sample_on_device", failing(real_on_device))


def _inject_in_readback(monkeypatch, engine, calls: list[int]) -> None:
    """Reading a step's tokens fails after it was counted as computed (with async scheduling, with
    the next step already queued on its tokens): both must be undone."""
    real_result = engine._result

    def failing_result(launched):
        if _poisoned(launched.sampling):
            calls.append(1)
            raise RuntimeError("injected read-back failure")
        return real_result(launched)

    monkeypatch.setattr(engine, "_result", failing_result)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("inject", [_inject_in_forward, _inject_in_sampler, _inject_in_readback],
                         ids=["forward", "sampler", "readback"])
def test_a_failure_only_the_poisoned_sequence_causes_fails_it_alone(
        tiny_model_dir, prompt_ids, undisturbed, monkeypatch, inject, async_scheduling) -> None:
    engine = _engine(tiny_model_dir, async_scheduling)
    calls: list[int] = []
    inject(monkeypatch, engine, calls)
    tokens, finals = _run(engine, _arrivals(prompt_ids, (prompt_ids[3], POISON_PARAMS)))
    assert calls, "the injected failure never fired"
    poisoned = finals[POISON_ID]
    assert poisoned.finish_reason == "error" and poisoned.error == "the model step failed: RuntimeError"
    _assert_isolated(engine, tokens, finals, undisturbed)


def test_a_top_k_beyond_int64_limits_nothing(tiny_model_dir, prompt_ids, undisturbed) -> None:
    """A top_k no tensor holds is a top_k past the vocabulary: no limit (it used to fail the batch)."""
    huge = SamplingParams(max_tokens=12, temperature=0.9, seed=1, top_k=10**400)
    engine = _engine(tiny_model_dir, False)
    tokens, finals = _run(engine, _arrivals(prompt_ids, (prompt_ids[3], huge)))
    _assert_isolated(engine, tokens, finals, undisturbed)
    plain, _ = _run(_engine(tiny_model_dir, False), {0: [(0, prompt_ids[3], POISON_PARAMS)]})
    assert finals[POISON_ID].finish_reason == "length" and tokens[POISON_ID] == plain[0]


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("prompt", "params", "message"), [
    (None, SamplingParams(seed=2**64), "seed = 18446744073709551616 is outside [-2**63, 2**64)"),
    (None, SamplingParams(seed=-(2**120)), "seed = an integer of 121 bits is outside [-2**63, 2**64)"),
    (None, SamplingParams(logit_bias=((4096, 1.0),)), "logit_bias token id 4096 is outside [0, 4096)"),
    (None, SamplingParams(logit_bias=((3, float("inf")),)), "logit_bias value inf is not a finite float32 number"),
    (None, SamplingParams(temperature=float("nan")), "temperature = nan is outside [0, 3.40282e+38]"),
    (None, SamplingParams(repetition_penalty=0.0), "repetition_penalty = 0.0 is outside"),
    (None, SamplingParams(top_p=1e40), "top_p = 1e+40 is outside [0, 1]"),
    (None, SamplingParams(logprobs=5000), "logprobs = 5000 is outside [0, 4096]"),
    (None, SamplingParams(max_tokens=-1), "max_tokens = -1 is negative"),
    ([1, 2, 4096], SamplingParams(), "prompt token ids must be integers in [0, 4096)"),
    ([-1, 2], SamplingParams(), "prompt token ids must be integers in [0, 4096)"),
    ([], SamplingParams(), "the prompt has 0 tokens"),
])
def test_values_no_batch_could_hold_fail_only_their_sequence(
        tiny_model_dir, prompt_ids, undisturbed, prompt, params, message, async_scheduling) -> None:
    engine = _engine(tiny_model_dir, async_scheduling)
    tokens, finals = _run(engine, _arrivals(prompt_ids, (prompt if prompt is not None else prompt_ids[3], params)))
    refused = finals[POISON_ID]
    assert refused.finish_reason == "error" and refused.error.startswith(f"invalid request: {message}")
    assert tokens[POISON_ID] == [] and refused.num_output_tokens == 0
    _assert_isolated(engine, tokens, finals, undisturbed)


@pytest.mark.parametrize(("prompt", "params", "error"), [
    (None, SamplingParams(max_tokens=12, temperature=0.9, logit_bias=((10**6, 1.0),)), "IndexError"),
    ([5, 10**6, 7], SamplingParams(max_tokens=12, temperature=0.0), "IndexError"),
])
def test_a_real_failure_past_the_checks_is_bisected_to_its_sequence(
        tiny_model_dir, prompt_ids, undisturbed, monkeypatch, prompt, params, error) -> None:
    """With the checks at `add` switched off, the bad value fails the batch for real (the bias
    table's indexing, the embedding lookup): the engine finds the sequence by bisection."""
    monkeypatch.setattr(engine_module, "check_sampling_params", lambda params, vocab_size: None)
    monkeypatch.setattr(engine_module, "check_prompt", lambda ids, vocab_size, max_model_len: None)
    engine = _engine(tiny_model_dir, False)
    tokens, finals = _run(engine, _arrivals(prompt_ids, (prompt if prompt is not None else prompt_ids[3], params)))
    assert finals[POISON_ID].finish_reason == "error" and finals[POISON_ID].error == f"the model step failed: {error}"
    _assert_isolated(engine, tokens, finals, undisturbed)


def test_a_failed_step_is_undone_before_it_is_rerun(tiny_model_dir, prompt_ids, monkeypatch) -> None:
    """The step queued ahead and the one being read are both undone: computed counts as before
    them, no token pending, seeded generators rewound."""
    engine = _engine(tiny_model_dir, True)
    engine.add(0, prompt_ids[0], SamplingParams(max_tokens=30, temperature=1.0, seed=4))
    engine.add(1, prompt_ids[1], SamplingParams(max_tokens=30, temperature=0.0))
    for _ in range(3):
        engine.step()
    seqs = [engine._tracked[i].seq for i in (0, 1)]
    launched = engine._in_flight
    assert launched is not None
    before = [(s.num_computed_tokens - s.num_pending_tokens, s.num_output_tokens) for s in seqs]
    generator = engine._tracked[0].generator
    expected_state = launched.generator_states[0][1]
    seen: list = []

    def failing_recover():
        seen.append([(s.num_computed_tokens, s.num_pending_tokens, s.num_output_tokens) for s in seqs])
        seen.append(torch.equal(generator.get_state(), expected_state))
        return []

    monkeypatch.setattr(engine, "_result", lambda launched: (_ for _ in ()).throw(RuntimeError("boom")))
    monkeypatch.setattr(engine, "_recover", failing_recover)
    assert engine.step() == []
    # The step in flight had computed the last known token; undone, it is uncomputed again.
    assert seen[0] == [(computed - 1, 0, n) for computed, n in before]
    assert seen[1] is True and engine._in_flight is None


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_a_transient_failure_fails_nobody(tiny_model_dir, prompt_ids, undisturbed, monkeypatch,
                                          async_scheduling) -> None:
    """One forward that fails once (an out-of-memory blip) is undone and rerun: every stream finishes."""
    engine = _engine(tiny_model_dir, async_scheduling)
    execute = engine.runner.execute
    calls = {"n": 0}

    def blip(scheduled, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("injected one-off failure")
        return execute(scheduled, *args, **kwargs)

    monkeypatch.setattr(engine.runner, "execute", blip)
    tokens, finals = _run(engine, _arrivals(prompt_ids, None))
    assert calls["n"] > 6
    _assert_isolated(engine, tokens, finals, undisturbed)


def test_the_batch_builder_takes_any_checked_values() -> None:
    """What `check_sampling_params` lets through, `build_sampling_batch` turns into tensors."""
    from llmserve.engine.request import Sequence
    from llmserve.engine.sampler import build_sampling_batch, check_sampling_params, sample

    extremes = [SamplingParams(top_k=10**400), SamplingParams(top_k=2**63), SamplingParams(seed=-(2**63)),
                SamplingParams(seed=2**64 - 1, temperature=3e38, presence_penalty=-3e38, logit_bias=((5, -3e38),)),
                SamplingParams(repetition_penalty=1e-30, top_p=0.0, min_p=1.0, logprobs=6, prompt_logprobs=0)]
    for params in extremes:
        check_sampling_params(params, 6)
    batch = build_sampling_batch([Sequence(i, [0], p) for i, p in enumerate(extremes)], [None] * 5, None, 6,
                                 torch.device("cpu"))
    assert batch.top_k.tolist() == [6, 6, 6, 6, 6]
    result = sample(torch.randn(5, 6), batch)  # extreme rows may sample oddly, but sample they do
    assert len(result.token_ids) == 5 and all(0 <= t < 6 for t in result.token_ids)
