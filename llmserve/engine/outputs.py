"""A sequence's output bookkeeping, shared by both engine paths (`engine/engine.py`, `generic/engine.py`).

Each tracked sequence holds its detokenizer, its seeded generator and the tokens and logprobs
not yet reported; `check_stop` decides whether a new token ends it and `emit` turns what is
pending into one `SequenceOutput` event. The engines differ in how they run the model only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from llmserve.engine.detokenizer import IncrementalDetokenizer, TokenTexts
from llmserve.engine.request import Sequence, SequenceStatus, TokenLogprob
from llmserve.engine.sampler import SampleResult, make_generator


@dataclass(slots=True)
class SequenceOutput:
    """What one sequence produced since its last event."""

    seq_id: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int = 0
    error: str | None = None
    # Logprobs of the prompt tokens (None for the first), on the sequence's first event only.
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class TrackedSequence:
    """A live sequence and what it has produced but not yet reported."""

    seq: Sequence
    detok: IncrementalDetokenizer
    generator: torch.Generator | None
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # filled as prefill runs
    has_emitted: bool = False


def track(seq: Sequence, tokenizer: Any, device: torch.device, texts: TokenTexts | None = None) -> TrackedSequence:
    """The bookkeeping of a new sequence: its detokenizer (with the engine's `TokenTexts`), seeded
    generator, prompt-logprob slots."""
    tracked = TrackedSequence(seq, IncrementalDetokenizer(tokenizer, seq.prompt_ids, seq.params.stop,
                                                          seq.params.special_text_ids, texts),
                              make_generator(seq.params, device))
    if seq.params.prompt_logprobs is not None:
        tracked.prompt_logprobs = [None] * len(seq.prompt_ids)
    return tracked


def token_logprob(result: SampleResult, row: int, k: int) -> TokenLogprob:
    """Row `row`'s sampled token with its logprob and the top `k` alternatives."""
    assert result.logprobs is not None and result.top_ids is not None and result.top_logprobs is not None
    top = list(zip(result.top_ids[row][:k], result.top_logprobs[row][:k], strict=True))
    return TokenLogprob(result.token_ids[row], result.logprobs[row], top)


def check_stop(tracked: TrackedSequence, token_id: int, stop_token_ids: frozenset[int]) -> SequenceStatus | None:
    """Whether the token just appended ends the sequence (EOS, a stop token or string, max_tokens)."""
    seq, params = tracked.seq, tracked.seq.params
    is_eos = token_id in stop_token_ids and not params.ignore_eos
    if is_eos or token_id in params.stop_token_ids:
        return SequenceStatus.FINISHED_STOPPED
    tracked.detok.push(token_id)
    if tracked.detok.stopped:
        return SequenceStatus.FINISHED_STOPPED
    if seq.num_output_tokens >= params.max_tokens:
        return SequenceStatus.FINISHED_LENGTH
    return None


def emit(tracked: TrackedSequence, finish_reason: str | None) -> SequenceOutput:
    """The pending tokens, text and logprobs as one event (prompt logprobs on the first only)."""
    seq = tracked.seq
    output = SequenceOutput(
        seq_id=seq.seq_id,
        text=tracked.detok.release(is_final=finish_reason is not None),
        token_ids=tracked.pending_ids,
        logprobs=tracked.pending_logprobs,
        finish_reason=finish_reason,
        num_prompt_tokens=seq.num_prompt_tokens,
        num_output_tokens=seq.num_output_tokens,
        num_cached_tokens=seq.num_cached_tokens,
        prompt_logprobs=None if tracked.has_emitted else tracked.prompt_logprobs,
    )
    tracked.has_emitted = True
    tracked.pending_ids = []
    tracked.pending_logprobs = []
    return output
