"""GenericEngine against the models' own `generate` and forward: token-exact greedy, logprobs
within 1e-4 (float32), requests joining and leaving between steps, n > 1, seeds, stop strings,
abort freeing the cache, and a failing request failing alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from llmserve.engine.outputs import SequenceOutput
from llmserve.engine.request import SamplingParams
from llmserve.generic.engine import GenericEngine
from tests.generic.conftest import (
    MODELS,
    forward_logprobs,
    generate,
    generic_engine_factory,
    load_reference,
    worker_config,
)

TEXTS = ["def f(x):\n    return x * 2\n", "alpha beta", "The rain in Spain " * 6, "z", "import numpy as np",
         "SELECT name FROM users WHERE"]
MAX_TOKENS = [17, 9, 12, 20, 6, 14]


def engine_for(model_dir: Path, **overrides: Any) -> GenericEngine:
    return generic_engine_factory(worker_config(model_dir, **overrides), 0)


def run(engine: GenericEngine, requests: list[tuple[list[int], SamplingParams]], join_every: int = 1,
        burst: int = 1) -> dict[int, list[SequenceOutput]]:
    """Add `burst` requests every `join_every` steps (they join a running batch, those of one step
    prefilled together); step until all finish."""
    events: dict[int, list[SequenceOutput]] = {i: [] for i in range(len(requests))}
    step, added = 0, 0
    while added < len(requests) or engine.has_work:
        if step % join_every == 0:
            for i in range(added, min(added + burst, len(requests))):
                engine.add(i, *requests[i])
            added = min(added + burst, len(requests))
        for output in engine.step():
            events[output.seq_id].append(output)
        step += 1
    return events


def tokens(events: list[SequenceOutput]) -> list[int]:
    return [t for e in events for t in e.token_ids]


@pytest.mark.parametrize("name", MODELS)
def test_greedy_is_token_exact_and_logprobs_match_the_models_forward(name: str, model_dirs: dict[str, Path]) -> None:
    model_dir = model_dirs[name]
    engine = engine_for(model_dir)
    assert engine.layout is not None, "the probe found stacked decoding exact for this model"
    # TinyGLM's hand-written attention turns padded prompt positions into NaNs: its prompts run alone
    assert engine.batched_prefill == (name != "remote")
    reference = load_reference(model_dir)
    prompts = [engine.tokenizer.encode(t) for t in TEXTS]
    params = [SamplingParams(max_tokens=n, temperature=0, logprobs=2) for n in MAX_TOKENS]
    events = run(engine, list(zip(prompts, params, strict=True)), join_every=3, burst=2)
    distinct = set()
    for i, prompt in enumerate(prompts):
        got = tokens(events[i])
        assert got == generate(reference, prompt, MAX_TOKENS[i]), f"{name} request {i}"
        assert events[i][-1].finish_reason in ("length", "stop") and events[i][-1].error is None
        text = engine.tokenizer.decode(got, skip_special_tokens=True)
        assert "".join(e.text for e in events[i]) == text.rstrip("\ufffd")  # an unfinished character waits
        expected = forward_logprobs(reference, prompt + got)[len(prompt) - 1:]
        logprobs = [lp for e in events[i] for lp in e.logprobs]
        for step, lp in enumerate(logprobs):
            assert lp.token_id == got[step]
            assert abs(lp.logprob - float(expected[step, got[step]])) < 1e-4
            top_values, top_ids = expected[step].topk(2)
            assert [t for t, _ in lp.top] == top_ids.tolist()
            assert max(abs(v - float(e)) for (_, v), e in zip(lp.top, top_values, strict=True)) < 1e-4
        distinct.update(got)
    assert len(distinct) > 10, "random weights that give varied outputs"
    assert not engine.has_work and not engine._groups, "finished sequences left their batch"


def test_prompt_logprobs_match_the_models_forward(hybrid_dir: Path) -> None:
    engine = engine_for(hybrid_dir)
    reference = load_reference(hybrid_dir)
    prompt = engine.tokenizer.encode(TEXTS[0])
    events = run(engine, [(prompt, SamplingParams(max_tokens=3, temperature=0, prompt_logprobs=1))])
    table = events[0][0].prompt_logprobs
    assert table is not None and table[0] is None and len(table) == len(prompt)
    expected = forward_logprobs(reference, prompt)
    for p in range(1, len(prompt)):
        entry = table[p]
        assert entry is not None and entry.token_id == prompt[p]
        assert abs(entry.logprob - float(expected[p - 1, prompt[p]])) < 1e-4
        assert entry.top[0][0] == int(expected[p - 1].argmax())


def test_one_sequence_per_forward_is_exact_too(hybrid_dir: Path) -> None:
    engine = engine_for(hybrid_dir)
    engine.layout = None  # as for a model whose stacked decode failed the probe
    reference = load_reference(hybrid_dir)
    prompts = [engine.tokenizer.encode(t) for t in TEXTS[:3]]
    events = run(engine, [(p, SamplingParams(max_tokens=8, temperature=0)) for p in prompts])
    assert [tokens(events[i]) for i in range(3)] == [generate(reference, p, 8) for p in prompts]


def test_seeds_n_and_penalties_do_not_depend_on_the_batch(hybrid_dir: Path) -> None:
    engine = engine_for(hybrid_dir)
    prompt = engine.tokenizer.encode(TEXTS[1])
    seeded = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7, frequency_penalty=0.5)
    alone = tokens(run(engine, [(prompt, seeded)])[0])
    crowd = [(engine.tokenizer.encode(t), SamplingParams(max_tokens=12, temperature=1.0)) for t in TEXTS[2:5]]
    # n = 3 of the same seeded request, joining a batch of unseeded ones
    events = run(engine, [*crowd, (prompt, seeded), (prompt, seeded), (prompt, seeded)], join_every=1)
    assert [tokens(events[i]) for i in (3, 4, 5)] == [alone] * 3
    unseeded = run(engine, [(prompt, SamplingParams(max_tokens=12, temperature=1.0))] * 2)
    assert tokens(unseeded[0]) != tokens(unseeded[1])


def test_stop_strings_end_the_text(remote_dir: Path) -> None:
    engine = engine_for(remote_dir)
    prompt = engine.tokenizer.encode(TEXTS[0])
    full = "".join(e.text for e in run(engine, [(prompt, SamplingParams(max_tokens=20, temperature=0))])[0])
    stop = full[len(full) // 2:len(full) // 2 + 3]
    events = run(engine, [(prompt, SamplingParams(max_tokens=20, temperature=0, stop=(stop,)))])[0]
    assert events[-1].finish_reason == "stop"
    assert "".join(e.text for e in events) == full[:full.index(stop)]


def test_abort_frees_the_sequences_cache_rows_at_once(hybrid_dir: Path) -> None:
    engine = engine_for(hybrid_dir)
    prompts = [engine.tokenizer.encode(t) for t in TEXTS[:4]]
    for i, prompt in enumerate(prompts):
        engine.add(i, prompt, SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    for _ in range(3):
        engine.step()
    (batch,) = engine._groups
    assert batch.num_rows == 4 and _cache_rows(batch.cache) == {4}
    longest = max(range(4), key=lambda i: len(prompts[i]))
    final = engine.abort(longest)
    assert final is not None and final.finish_reason == "abort"
    assert batch.num_rows == 3 and _cache_rows(batch.cache) == {3}
    assert batch.padded_length == max(batch.lengths), "padding only the aborted row needed was cut"
    for i in range(4):
        engine.abort(i)
    assert not engine.has_work and not engine._groups and not engine._group_of


def _cache_rows(cache: Any) -> set[int]:
    from llmserve.generic.rows import slots

    return {s.value.shape[0] for s in slots(cache).values() if isinstance(s.value, torch.Tensor) and s.value.dim() > 1}


def test_a_request_that_fails_its_prefill_fails_alone(hybrid_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_for(hybrid_dir)
    reference = load_reference(hybrid_dir)
    prompts = [engine.tokenizer.encode(t) for t in TEXTS[:3]]
    bad = prompts[1]
    prefill = engine.forward.prefill

    def failing_prefill(ids: list[int], all_logits: bool) -> Any:
        if ids[:len(bad)] == bad:
            raise RuntimeError("boom")
        return prefill(ids, all_logits)

    monkeypatch.setattr(engine.forward, "prefill", failing_prefill)
    events = run(engine, [(p, SamplingParams(max_tokens=8, temperature=0)) for p in prompts])
    assert events[1][-1].finish_reason == "error" and "prefill" in (events[1][-1].error or "")
    for i in (0, 2):
        assert tokens(events[i]) == generate(reference, prompts[i], 8)


def test_a_failed_batched_decode_is_retried_one_by_one(hybrid_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_for(hybrid_dir)
    reference = load_reference(hybrid_dir)
    prompts = [engine.tokenizer.encode(t) for t in TEXTS[:4]]
    decode = engine.forward.decode
    calls = {"n": 0, "failed": 0}

    def flaky_decode(cache: Any, token_ids: list[int], mask: torch.Tensor, positions: list[int]) -> Any:
        calls["n"] += 1
        if len(token_ids) > 2 and calls["n"] in (3, 4):  # two stacked steps fail (the cache half updated)
            decode(cache, token_ids, mask, positions)
            calls["failed"] += 1
            raise RuntimeError("out of memory")
        return decode(cache, token_ids, mask, positions)

    monkeypatch.setattr(engine.forward, "decode", flaky_decode)
    events = run(engine, [(p, SamplingParams(max_tokens=10, temperature=0)) for p in prompts], join_every=1)
    assert calls["failed"] == 2
    for i, prompt in enumerate(prompts):
        assert events[i][-1].error is None
        assert tokens(events[i]) == generate(reference, prompt, 10), f"request {i}"


def test_a_poisoned_request_joining_eight_streams_fails_alone(hybrid_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: a request whose every decode raises joins 7 running streams; it alone fails, the
    7 innocent streams are token-exact and the batch's cache holds no rows afterwards."""
    engine = engine_for(hybrid_dir)
    reference = load_reference(hybrid_dir)
    texts = TEXTS + ["lambda y: y + 1", "for i in range(3):"]
    prompts = [engine.tokenizer.encode(t) for t in texts[:8]]
    poisoned = 5
    prompts[poisoned] = engine.tokenizer.encode("import os\n" * 40)  # no other row ever reaches its positions
    decode = engine.forward.decode
    failures = {"n": 0}

    def poisoned_decode(cache: Any, token_ids: list[int], mask: torch.Tensor, positions: list[int]) -> Any:
        if max(positions) >= len(prompts[poisoned]):  # a batch holding the poisoned row (none other gets there)
            failures["n"] += 1
            raise RuntimeError("poisoned input")
        return decode(cache, token_ids, mask, positions)

    assert all(len(p) + 12 < len(prompts[poisoned]) for i, p in enumerate(prompts) if i != poisoned)
    prefill = engine.forward.prefill

    def poisoned_prefill(ids: list[int], all_logits: bool) -> Any:
        if len(ids) > len(prompts[poisoned]):  # the poisoned row rerun alone from its tokens so far
            failures["n"] += 1
            raise RuntimeError("poisoned input")
        return prefill(ids, all_logits)

    monkeypatch.setattr(engine.forward, "decode", poisoned_decode)
    monkeypatch.setattr(engine.forward, "prefill", poisoned_prefill)
    events = run(engine, [(p, SamplingParams(max_tokens=12, temperature=0)) for p in prompts], burst=1)
    assert failures["n"] >= 2  # the stacked step, then its rerun alone
    assert events[poisoned][-1].finish_reason == "error"
    for i, prompt in enumerate(prompts):
        if i != poisoned:
            assert events[i][-1].error is None, (i, events[i][-1].error)
            assert tokens(events[i]) == generate(reference, prompt, 12), f"request {i}"
    assert not engine.has_work and not engine._groups


def _in_memory_engine(model: Any, tokenizer: Any) -> GenericEngine:
    from llmserve.generic.batching import plan_batching
    from llmserve.generic.forward import ModelForward

    forward = ModelForward(model, torch.device("cpu"))
    plan = plan_batching(forward, model.config.vocab_size, torch.float32)
    return GenericEngine(forward, tokenizer, frozenset(), model.config.vocab_size, 4096, plan.layout,
                         batched_prefill=plan.batched_prefill)


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_sliding_window_caches_stack_exactly(family: str, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, MistralConfig, MistralForCausalLM

    shape = {"vocab_size": 4096, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2}
    torch.manual_seed(5)
    model = (MistralForCausalLM(MistralConfig(num_hidden_layers=2, sliding_window=5, **shape)) if family == "mistral"
             else Gemma2ForCausalLM(Gemma2Config(num_hidden_layers=4, head_dim=16, sliding_window=6, **shape))).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.3 if "embed" in name else 0.1)
    engine = _in_memory_engine(model, AutoTokenizer.from_pretrained(tiny_model_dir))
    assert engine.layout is not None and engine.layout.counters, "the windowed layers' position counters"
    prompts = [engine.tokenizer.encode(t) for t in TEXTS]  # several windows long, and shorter than one
    events = run(engine, [(p, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
                          for p, n in zip(prompts, MAX_TOKENS, strict=True)])
    for i, prompt in enumerate(prompts):
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS[i], do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
        assert tokens(events[i]) == out[0, len(prompt):].tolist(), f"request {i}"


def test_a_model_that_ignores_padding_decodes_alone(tiny_model_dir: Path) -> None:
    from llmserve.generic.batching import plan_batching
    from llmserve.generic.forward import ModelForward

    forward = ModelForward(load_reference(tiny_model_dir), torch.device("cpu"))
    forward.takes_position_ids = False  # positions from the padded cache length: wrong for padded rows
    plan = plan_batching(forward, 4096, torch.float32)
    assert plan.layout is None and not plan.batched_prefill and "differs from a lone one" in plan.reason


def test_a_request_with_values_no_batch_can_hold_is_refused_alone(hybrid_dir: Path) -> None:
    engine = engine_for(hybrid_dir)
    reference = load_reference(hybrid_dir)
    prompts = [engine.tokenizer.encode(t) for t in TEXTS[:3]]
    bad = SamplingParams(max_tokens=8, temperature=0, logit_bias=((10**9, 1.0),))  # past the HTTP edge's checks
    requests = [(prompts[0], SamplingParams(max_tokens=8, temperature=0)), (prompts[1], bad),
                (prompts[2], SamplingParams(max_tokens=8, temperature=0))]
    events = run(engine, requests, burst=3)
    assert events[1][-1].finish_reason == "error"
    assert "invalid request: logit_bias token id" in (events[1][-1].error or "")
    for i in (0, 2):
        assert tokens(events[i]) == generate(reference, prompts[i], 8)
    assert not engine.has_work and not engine._groups


def test_a_request_that_fails_sampling_fails_alone(hybrid_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llmserve.generic.engine.check_sampling_params", lambda params, vocab_size: None)
    engine = engine_for(hybrid_dir)
    reference = load_reference(hybrid_dir)
    prompts = [engine.tokenizer.encode(t) for t in TEXTS[:3]]
    bad = SamplingParams(max_tokens=8, temperature=0, logit_bias=((10**9, 1.0),))  # past the HTTP edge's checks
    requests = [(prompts[0], SamplingParams(max_tokens=8, temperature=0)), (prompts[1], bad),
                (prompts[2], SamplingParams(max_tokens=8, temperature=0))]
    events = run(engine, requests, burst=3)
    assert events[1][-1].finish_reason == "error" and "sampling" in (events[1][-1].error or "")
    for i in (0, 2):
        assert tokens(events[i]) == generate(reference, prompts[i], 8)
    assert not engine.has_work and not engine._groups
