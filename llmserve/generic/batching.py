"""Whether a model's sequences may run together: learned and checked by running the model.

Two probe prompts of different lengths are prefilled alone; their caches show what grows with the
sequence (`learn_layout`). Then one step decoded with both rows stacked (left-padded), and one
more after the longer row left (its padding trimmed), must give the logprobs that decoding each
alone gives, within the dtype's tolerance. A model whose cache cannot be stacked, or whose forward
does not honour the padding (a remote model that ignores `attention_mask` or `position_ids`),
decodes one sequence per forward instead: slower, never wrong. Prompts admitted in the same step
are prefilled in one left-padded forward only if that, too, gives what prefilling alone gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmserve.generic.batch import RowBatch
from llmserve.generic.forward import ModelForward
from llmserve.generic.rows import CacheLayout, CannotStack, learn_layout

# Largest logprob difference between a stacked decode and a lone one, per dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 5e-2}
_SHORT, _LONG = 2, 9


@dataclass(frozen=True)
class BatchingPlan:
    """How a model's sequences share forwards."""

    layout: CacheLayout | None  # the cache layout to stack with; None: each sequence decodes alone
    batched_prefill: bool  # prompts admitted in one step are prefilled in one left-padded forward
    reason: str  # why, for the start-up log


def plan_batching(forward: ModelForward, vocab_size: int, dtype: torch.dtype) -> BatchingPlan:
    """Stack decodes (and prefills) where running the model shows it exact."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(vocab_size, 1000), (_LONG,), generator=generator).tolist()
    short, long = ids[:_SHORT], ids[::-1]
    tolerance = TOLERANCE.get(dtype, 5e-2)
    try:
        with torch.inference_mode():
            layout, reason = _check(forward, short, long, tolerance)
    except CannotStack as exc:
        return BatchingPlan(None, False, f"its cache cannot be stacked ({exc})")
    except Exception as exc:  # noqa: BLE001 - any failure of a stacked forward means: don't stack
        return BatchingPlan(None, False, f"a stacked decode failed ({type(exc).__name__}: {str(exc)[:120]})")
    if layout is None:
        return BatchingPlan(None, False, reason)
    try:
        with torch.inference_mode():
            error = _check_prefill(forward, short, long)
    except Exception as exc:  # noqa: BLE001 - a padded prefill that fails: prefill alone
        return BatchingPlan(layout, False, f"{reason}; padded prefill failed ({type(exc).__name__})")
    if error > tolerance:
        return BatchingPlan(layout, False, f"{reason}; a padded prefill differs by {error:.2e}: prompts run alone")
    return BatchingPlan(layout, True, f"{reason}, padded prefills too")


def _check_prefill(forward: ModelForward, short: list[int], long: list[int]) -> float:
    """Largest logprob difference between prefilling the prompts together (then one stacked decode)
    and prefilling and decoding each alone."""
    alone = [forward.prefill(p, False) for p in (short, long)]
    firsts = [int(a.logits[-1].argmax()) for a in alone]
    expected = [_decode(forward, RowBatch(i, a.cache, len(p), forward.device), [firsts[i]])[0]
                for i, (a, p) in enumerate(zip(alone, (short, long), strict=True))]
    cache, mask, logits = forward.prefill_batch([short, long])
    batch = RowBatch.of([0, 1], cache, mask, [len(short), len(long)])
    stacked = _decode(forward, batch, firsts)
    prefill_error = max(_distance(torch.log_softmax(logits[i], -1), torch.log_softmax(alone[i].logits[-1], -1))
                        for i in range(2))
    return max(prefill_error, _distance(stacked[0], expected[0]), _distance(stacked[1], expected[1]))


def _check(forward: ModelForward, short: list[int], long: list[int], tolerance: float) -> tuple[CacheLayout | None, str]:
    device = forward.device
    a, b = forward.prefill(short, False), forward.prefill(long, False)
    layout = learn_layout(a.cache, b.cache, len(short), len(long))
    forward.decode_with_mask = bool(layout.seq_dims)
    next_short, next_long = int(a.logits[-1].argmax()), int(b.logits[-1].argmax())
    alone_short, alone_long = RowBatch(0, a.cache, len(short), device), RowBatch(1, b.cache, len(long), device)
    expected = [_decode(forward, alone_short, [next_short])[0], _decode(forward, alone_long, [next_long])[0]]
    then_short = int(expected[0].argmax())
    expected_then = _decode(forward, alone_short, [then_short])[0]

    batch = RowBatch(0, forward.prefill(short, False).cache, len(short), device)
    batch.join([RowBatch(1, forward.prefill(long, False).cache, len(long), device)], layout)
    stacked = _decode(forward, batch, [next_short, next_long])
    batch.remove({1}, layout)
    stacked_then = _decode(forward, batch, [then_short])[0]
    error = max(_distance(stacked[0], expected[0]), _distance(stacked[1], expected[1]),
                _distance(stacked_then, expected_then))
    if error > tolerance:
        return None, f"a stacked decode differs from a lone one by {error:.2e} (tolerance {tolerance:.0e})"
    return layout, f"stacked decodes match lone ones within {tolerance:.0e}"


def _decode(forward: ModelForward, batch: RowBatch, token_ids: list[int]) -> torch.Tensor:
    """[B, V] logprobs of one decoded step; the batch advances."""
    mask, positions = batch.decode_inputs()
    logits, cache = forward.decode(batch.cache, token_ids, mask, positions)
    batch.advance(cache, mask)
    return torch.log_softmax(logits, dim=-1)


def _distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest difference of two logprob rows; infinite on any NaN (NaNs from padding never pass) or
    where one masks a token (-inf) that the other does not."""
    finite = torch.isfinite(x)
    if bool(x.isnan().any()) or bool(y.isnan().any()) or not torch.equal(finite, torch.isfinite(y)):
        return float("inf")
    return float((x[finite] - y[finite]).abs().max())
