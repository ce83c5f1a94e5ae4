"""Sampler: greedy, filters, penalties, seeded reproducibility and logprobs, row by row."""

from __future__ import annotations

import math

import torch

from llmserve.engine.request import SamplingParams, Sequence
from llmserve.engine.sampler import (
    apply_penalties,
    argmax_ids,
    build_sampling_batch,
    filter_logits,
    make_generator,
    read_sample,
    sample,
    sample_on_device,
)

CPU = torch.device("cpu")


def _batch(params: list[SamplingParams], outputs: list[list[int]] | None = None, vocab: int = 6):
    seqs = []
    for i, p in enumerate(params):
        seq = Sequence(i, [0], p)
        seq.output_ids = list(outputs[i]) if outputs else []
        seqs.append(seq)
    gens = [make_generator(p, CPU) for p in params]
    return build_sampling_batch(seqs, gens, None, vocab, CPU)


def test_greedy_rows_take_the_argmax() -> None:
    logits = torch.tensor([[0.1, 2.0, 0.3, 0, 0, 0], [5.0, 0, 0, 0, 0, 1.0]])
    result = sample(logits, _batch([SamplingParams(temperature=0.0)] * 2))
    assert result.token_ids == [1, 0]
    assert result.logprobs is None


def test_top_k_one_is_greedy_even_when_sampling() -> None:
    logits = torch.randn(4, 6)
    result = sample(logits, _batch([SamplingParams(temperature=1.5, top_k=1)] * 4))
    assert result.token_ids == logits.argmax(-1).tolist()


def test_top_p_keeps_the_smallest_prefix_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0, 0.0]])
    logits = probs.clamp_min(1e-9).log()
    out = filter_logits(logits, _batch([SamplingParams(top_p=0.75)]))
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2:]).all()


def test_min_p_drops_tokens_below_a_share_of_the_best() -> None:
    probs = torch.tensor([[0.6, 0.25, 0.1, 0.05, 0.0, 0.0]])
    out = filter_logits(probs.clamp_min(1e-9).log(), _batch([SamplingParams(min_p=0.2)]))
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2:]).all()


def test_filters_without_a_sort_match_the_sorted_path() -> None:
    """Rows without top-k / top-p skip the sort; min-p alone and plain temperature give what the
    sorted path gives."""
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    for params in ([SamplingParams(temperature=0.7)] * 3,
                   [SamplingParams(temperature=1.3, min_p=0.1), SamplingParams(min_p=0.3), SamplingParams()]):
        fast = _batch(params, vocab=50)
        assert not fast.uses_top_k_or_p
        sorted_path = _batch(params, vocab=50)
        sorted_path.uses_top_k_or_p = True
        torch.testing.assert_close(filter_logits(logits, fast), filter_logits(logits, sorted_path))


def test_penalties_follow_their_definitions() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 1.0, 0.0, 0.0]])
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0)
    batch = _batch([params], outputs=[[2, 2, 1]])
    out = apply_penalties(logits, batch)
    # token 0 is in the prompt ([0]): repetition only; token 1 once in output; token 2 twice.
    assert out[0].tolist() == [1.0, -4.0 - 0.25 - 0.5, 0.5 - 0.5 - 0.5, 1.0, 0.0, 0.0]


def test_seeded_rows_repeat_whatever_shares_the_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 50)
    seeded = SamplingParams(temperature=1.0, seed=1234)
    alone = [sample(logits, _batch([seeded], vocab=50)).token_ids[0] for _ in range(3)]
    mixed = sample(logits.repeat(3, 1), _batch([SamplingParams(temperature=1.0), seeded,
                                                SamplingParams(temperature=1.0)], vocab=50)).token_ids[1]
    assert alone[0] == alone[1] == alone[2] == mixed


def test_sampling_follows_the_distribution() -> None:
    logits = torch.tensor([[math.log(0.7), math.log(0.3), -1e9, -1e9, -1e9, -1e9]]).repeat(4000, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(1)]
    batch = _batch([SamplingParams(temperature=1.0)] * 4000)
    batch.default_generator = gens[0]
    tokens = sample(logits, batch).token_ids
    share = tokens.count(0) / len(tokens)
    assert 0.66 < share < 0.74 and set(tokens) <= {0, 1}


def test_logprobs_are_of_the_raw_distribution() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]])
    result = sample(logits, _batch([SamplingParams(temperature=0.0, logprobs=2)]))
    expected = torch.log_softmax(logits, -1)[0]
    assert result.token_ids == [2]
    assert math.isclose(result.logprobs[0], expected[2].item(), rel_tol=1e-6)
    assert result.top_ids[0] == [2, 1]
    assert math.isclose(result.top_logprobs[0][1], expected[1].item(), rel_tol=1e-6)


def test_logprobs_are_computed_for_the_rows_that_ask_only() -> None:
    """Rows without logprobs cost nothing extra: only the asking rows go to the host with their
    top-k, and the tokens equal the argmax (or a given argmax) like any greedy step's."""
    torch.manual_seed(0)
    logits = torch.randn(5, 6)
    params = [SamplingParams(temperature=0.0, logprobs=2 if row in (1, 3) else None) for row in range(5)]
    batch = _batch(params)
    drawn = sample_on_device(logits, batch)
    assert drawn.logprob_rows == [1, 3] and drawn.for_host.shape == (5 + 2 * (1 + 2 * 2),)
    result = read_sample(drawn, drawn.for_host)
    expected = torch.log_softmax(logits, -1)
    assert result.token_ids == logits.argmax(-1).tolist()
    for row in (1, 3):
        token = result.token_ids[row]
        assert math.isclose(result.logprobs[row], expected[row, token].item(), rel_tol=1e-6)
        assert result.top_ids[row] == expected[row].topk(2).indices.tolist()
    assert result.top_ids[0] == [] and result.logprobs[0] == 0.0
    given = torch.tensor([5, 4, 3, 2, 1])  # a graph's argmax is taken as it is
    assert sample_on_device(logits, batch, greedy_ids=given).token_ids is given
    biased = _batch([SamplingParams(temperature=0.0, logprobs=1, logit_bias=((0, 100.0),))] * 5)
    assert sample_on_device(logits, biased, greedy_ids=given).token_ids.tolist() == [0] * 5


def test_argmax_ids_is_argmax_with_ties_and_nans() -> None:
    logits = torch.randint(0, 3, (64, 4096)).float()  # many tied maxima per row: the first one wins
    logits[5, 7] = float("nan")  # a NaN row's index is its NaN's, as argmax gives
    logits[9] = float("-inf")
    assert torch.equal(argmax_ids(logits), logits.argmax(dim=-1))
    assert torch.equal(argmax_ids(logits[:1]), logits[:1].argmax(dim=-1))
