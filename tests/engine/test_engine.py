"""The engine end to end on the tiny model: token-exact against `model.generate` under continuous batching."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_engine
from llmserve.engine.request import SamplingParams

PROMPTS = [
    "Hello there, how are you today?",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "a",
    "import os\nimport sys\n\nclass Config:\n    pass\n",
    "Once upon a time",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14",
    "Return the sum of a list of numbers.",
    "x" * 50,
    "SELECT * FROM users WHERE",
]
MAX_TOKENS = [17, 5, 40, 23, 9, 31, 12, 3, 26, 14]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    outputs = []
    with torch.inference_mode():
        for ids, n in zip(prompt_ids, MAX_TOKENS, strict=True):
            generated = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
            outputs.append(generated[0, len(ids):].tolist())
    return prompt_ids, outputs


def _engine(tiny_model_dir, async_scheduling: bool = False, **overrides):
    config = WorkerConfig(model_path=str(tiny_model_dir), dtype="float32", kv_cache_tokens=8192, **overrides)
    engine = build_engine(config, 0)
    # The builder turns it on for CUDA only (on the CPU nothing overlaps); its logic runs anywhere.
    engine.async_scheduling = async_scheduling
    return engine


def _run(engine, arrivals: dict[int, list[tuple[int, list[int], SamplingParams]]]) -> dict[int, list[int]]:
    """Step the engine, adding requests at the given step numbers; returns tokens per sequence."""
    tokens: dict[int, list[int]] = {}
    step = 0
    while engine.has_work or any(k >= step for k in arrivals):
        for seq_id, ids, params in arrivals.get(step, []):
            engine.add(seq_id, ids, params)
            tokens[seq_id] = []
        for out in engine.step():
            tokens[out.seq_id] += out.token_ids
        step += 1
    return tokens


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("overrides", [
    {},
    {"max_num_batched_tokens": 24, "block_size": 8},  # chunked prefill across several steps
    {"max_num_seqs": 3},  # requests queue behind a small running batch
])
def test_greedy_is_token_exact_under_continuous_batching(tiny_model_dir, reference, overrides,
                                                         async_scheduling) -> None:
    prompt_ids, expected = reference
    engine = _engine(tiny_model_dir, async_scheduling, **overrides)
    arrivals: dict[int, list] = {}
    for i, (ids, n) in enumerate(zip(prompt_ids, MAX_TOKENS, strict=True)):
        arrivals.setdefault(i * 2, []).append((i, ids, SamplingParams(max_tokens=n, temperature=0.0)))
    tokens = _run(engine, arrivals)
    for i in range(len(PROMPTS)):
        assert tokens[i] == expected[i], f"request {i} differs"
    assert engine.pool.num_free_blocks == engine.pool.num_blocks


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_prefix_cache_hits_keep_outputs_exact(tiny_model_dir, reference, async_scheduling) -> None:
    prompt_ids, expected = reference
    engine = _engine(tiny_model_dir, async_scheduling, block_size=8)
    params = SamplingParams(max_tokens=MAX_TOKENS[2], temperature=0.0)
    first = _run(engine, {0: [(0, prompt_ids[2], params)]})
    hits_before = engine.pool.num_prefix_hits
    second = _run(engine, {0: [(1, prompt_ids[2], params)]})
    assert engine.pool.num_prefix_hits > hits_before
    assert first[0] == second[1] == expected[2]


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_preemption_under_a_small_cache_keeps_outputs_exact(tiny_model_dir, reference, async_scheduling) -> None:
    prompt_ids, expected = reference
    engine = build_engine(WorkerConfig(model_path=str(tiny_model_dir), dtype="float32", kv_cache_tokens=192,
                                       max_model_len=160, block_size=8), 0)
    engine.async_scheduling = async_scheduling
    arrivals = {0: [(i, prompt_ids[i], SamplingParams(max_tokens=MAX_TOKENS[i], temperature=0.0))
                    for i in range(len(PROMPTS))]}
    tokens = _run(engine, arrivals)
    assert engine.scheduler.num_preemptions > 0
    for i in range(len(PROMPTS)):
        assert tokens[i] == expected[i]
    assert engine.pool.num_free_blocks == engine.pool.num_blocks


def test_abort_frees_the_cache_at_once(tiny_model_dir) -> None:
    engine = _engine(tiny_model_dir)
    engine.add(0, [1, 2, 3, 4, 5], SamplingParams(max_tokens=100, temperature=0.0))
    engine.step()
    assert engine.pool.num_free_blocks < engine.pool.num_blocks
    final = engine.abort(0)
    assert final is not None and final.finish_reason == "abort"
    assert engine.pool.num_free_blocks == engine.pool.num_blocks and not engine.has_work


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_stop_strings_and_stop_tokens_end_sequences(tiny_model_dir, reference, async_scheduling) -> None:
    prompt_ids, expected = reference
    engine = _engine(tiny_model_dir, async_scheduling)
    tokenizer = engine.tokenizer
    full = tokenizer.decode(expected[2], skip_special_tokens=True)
    stop = full[10:14]
    engine.add(0, prompt_ids[2], SamplingParams(max_tokens=MAX_TOKENS[2], temperature=0.0, stop=(stop,)))
    engine.add(1, prompt_ids[2], SamplingParams(max_tokens=MAX_TOKENS[2], temperature=0.0,
                                                stop_token_ids=(expected[2][4],)))
    texts = {0: "", 1: ""}
    finals = {}
    while engine.has_work:
        for out in engine.step():
            texts[out.seq_id] += out.text
            if out.finish_reason:
                finals[out.seq_id] = out
    assert texts[0] == full[: full.index(stop)]
    assert finals[0].finish_reason == "stop"
    assert finals[1].finish_reason == "stop" and finals[1].num_output_tokens == expected[2].index(expected[2][4]) + 1
    assert engine.pool.num_free_blocks == engine.pool.num_blocks


class _CountingRunner:
    """Wraps a runner; counts the steps queued while another step's tokens were still pending."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.num_ahead = 0

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def execute(self, scheduled, prev_ids=None, source_rows=None):
        self.num_ahead += prev_ids is not None
        return self._runner.execute(scheduled, prev_ids, source_rows)


def test_async_scheduling_queues_steps_ahead_and_matches_a_synchronous_engine(tiny_model_dir, reference) -> None:
    """Greedy rows, seeded samples (top-p, top-k), logit bias and penalties run a step ahead;
    outputs equal a synchronous engine's."""
    prompt_ids, expected = reference
    greedy = [SamplingParams(max_tokens=MAX_TOKENS[i], temperature=0.0) for i in range(7)]
    arrivals = {0: [(i, prompt_ids[i], greedy[i]) for i in range(4)],
                3: [(10, [1, 2, 3], SamplingParams(max_tokens=15, temperature=0.8, top_p=0.9, top_k=50, seed=7))],
                6: [(12, prompt_ids[5], SamplingParams(max_tokens=12, temperature=0.0, logit_bias=((7, 5.0),)))],
                20: [(13, prompt_ids[4], SamplingParams(max_tokens=8, temperature=1.0, seed=3, presence_penalty=0.5))],
                30: [(11, prompt_ids[6], greedy[6])]}
    sync = _run(_engine(tiny_model_dir), arrivals)
    engine = _engine(tiny_model_dir, True)
    counting = _CountingRunner(engine.runner)
    engine.runner = counting
    got = _run(engine, arrivals)
    assert got == sync
    assert [got[i] for i in range(4)] == expected[:4] and got[11] == expected[6]
    assert counting.num_ahead > 20
    assert engine.pool.num_free_blocks == engine.pool.num_blocks


def _run_with_logprobs(engine, requests: list[tuple[int, list[int], SamplingParams]]) -> dict[int, list]:
    """All requests at once; per sequence its (token, logprob, top ids, top logprobs) events."""
    for seq_id, ids, params in requests:
        engine.add(seq_id, ids, params)
    events: dict[int, list] = {seq_id: [] for seq_id, _, _ in requests}
    while engine.has_work:
        for out in engine.step():
            if out.logprobs:
                events[out.seq_id] += [(lp.token_id, lp.logprob, [t for t, _ in lp.top], [v for _, v in lp.top])
                                       for lp in out.logprobs]
            else:
                events[out.seq_id] += [(token, None, [], []) for token in out.token_ids]
    return events


def test_penalties_and_logprobs_run_ahead_and_match_a_synchronous_engine(tiny_model_dir, reference) -> None:
    """Penalties count the token still in flight (drawn by the step queued before) and logprobs
    come back with the tokens: both run a step ahead and give what a synchronous engine gives."""
    prompt_ids, _ = reference
    requests = [
        (0, prompt_ids[1], SamplingParams(max_tokens=24, temperature=0.0, frequency_penalty=1.5)),
        (1, prompt_ids[8], SamplingParams(max_tokens=24, temperature=0.0, repetition_penalty=1.8)),
        (2, prompt_ids[6], SamplingParams(max_tokens=20, temperature=0.9, seed=5, presence_penalty=1.0,
                                          logprobs=3)),
        (3, prompt_ids[2], SamplingParams(max_tokens=20, temperature=0.0, logprobs=2)),
        (4, prompt_ids[3], SamplingParams(max_tokens=16, temperature=0.0)),
    ]
    sync = _run_with_logprobs(_engine(tiny_model_dir), requests)
    engine = _engine(tiny_model_dir, True)
    counting = _CountingRunner(engine.runner)
    engine.runner = counting
    got = _run_with_logprobs(engine, requests)
    assert counting.num_ahead >= 15
    assert {k: [e[0] for e in v] for k, v in got.items()} == {k: [e[0] for e in v] for k, v in sync.items()}
    for seq_id in (2, 3):
        for mine, theirs in zip(got[seq_id], sync[seq_id], strict=True):
            assert mine[2] == theirs[2] and len(mine[2]) == requests[seq_id][2].logprobs
            assert mine[1] == pytest.approx(theirs[1], abs=1e-5)
            assert mine[3] == pytest.approx(theirs[3], abs=1e-5)
    # The penalties bite: without them these prompts repeat tokens and decode differently.
    plain = _run_with_logprobs(_engine(tiny_model_dir), [(i, ids, SamplingParams(max_tokens=24, temperature=0.0))
                                                        for i, ids, _ in requests[:2]])
    assert all([e[0] for e in plain[i]] != [e[0] for e in got[i]] for i in (0, 1))
    assert engine.pool.num_free_blocks == engine.pool.num_blocks


def test_abort_while_a_step_is_in_flight(tiny_model_dir, reference) -> None:
    prompt_ids, expected = reference
    engine = _engine(tiny_model_dir, True)
    for i in (0, 1):
        engine.add(i, prompt_ids[i], SamplingParams(max_tokens=MAX_TOKENS[0], temperature=0.0))
    tokens: dict[int, list[int]] = {0: [], 1: []}
    for _ in range(4):
        for out in engine.step():
            tokens[out.seq_id] += out.token_ids
    assert engine._in_flight is not None  # the next step is queued with both sequences in it
    final = engine.abort(1)
    assert final is not None and final.finish_reason == "abort"
    while engine.has_work:
        for out in engine.step():
            assert out.seq_id == 0
            tokens[0] += out.token_ids
    assert tokens[0] == expected[0]
    assert engine.pool.num_free_blocks == engine.pool.num_blocks and not engine.has_work


def test_seeded_sampling_is_reproducible(tiny_model_dir) -> None:
    engine = _engine(tiny_model_dir)
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=42)
    a = _run(engine, {0: [(0, [1, 2, 3], params)]})[0]
    b = _run(engine, {0: [(1, [1, 2, 3], params), (2, [4, 5, 6], SamplingParams(max_tokens=20))]})[1]
    assert a == b


def _reference_prompt_logprobs(tiny_model_dir, ids: list[int]) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), -1)  # row p predicts token p + 1


def test_prompt_logprobs_match_a_plain_forward(tiny_model_dir, reference) -> None:
    prompt_ids, _ = reference
    ids = prompt_ids[2]  # long enough for several chunks and full blocks
    expected = _reference_prompt_logprobs(tiny_model_dir, ids)
    engine = _engine(tiny_model_dir, max_num_batched_tokens=16, block_size=8)
    # Cache the prefix first: a scoring request must still compute every position.
    _run(engine, {0: [(0, ids, SamplingParams(max_tokens=1, temperature=0.0))]})
    params = SamplingParams(max_tokens=0, temperature=0.0, prompt_logprobs=2)
    engine.add(1, ids, params)
    outputs = []
    while engine.has_work:
        outputs += engine.step()
    assert len(outputs) == 1 and outputs[0].finish_reason == "length" and outputs[0].num_output_tokens == 0
    scored = outputs[0].prompt_logprobs
    assert scored is not None and len(scored) == len(ids) and scored[0] is None
    for p in range(1, len(ids)):
        item = scored[p]
        assert item.token_id == ids[p]
        assert item.logprob == pytest.approx(expected[p - 1, ids[p]].item(), abs=1e-4)
        assert [t for t, _ in item.top] == expected[p - 1].topk(2).indices.tolist()
