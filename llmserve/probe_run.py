"""Running the load-time probe through an engine and comparing what it answers with the reference.

`probe_engine` runs the probe prompts (`probe.py` plans them and computes the model's own rows)
through any engine of the engine interface, each prefilled in chunks under a lowered token budget,
then compares every compared position's log-probabilities and greedy pick with the reference within
its tolerance; in half precision a failure gets a second comparison with the model's own float32
rows (`probe_precise.py`). `ProbeResult` is the verdict and what the start-up log line says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from llmserve.engine.request import SamplingParams, TokenLogprob
from llmserve.engine.scheduler import SchedulerConfig
from llmserve.probe import MAX_TOLERANCES, NUM_DECODE_STEPS, ProbePlan, Reference
from llmserve.probe_noise import NUM_TOP_LOGPROBS, OwnNoise


@dataclass(frozen=True)
class ProbeResult:
    """What the probe measured on one engine; `cause` is one line, empty when it passed."""

    cause: str
    max_difference: float
    tolerance: float
    dtype: torch.dtype
    num_positions: int
    num_near_ties: int
    is_chunked: bool
    plan: ProbePlan
    seconds: float
    reference_seconds: float
    noise: OwnNoise = OwnNoise()
    float32: str = ""
    """Where the comparison with the half-precision reference failed and the one with the model's own
    float32 forward decided: what that found ("" otherwise)."""

    @property
    def passed(self) -> bool:
        return not self.cause

    def summary(self) -> str:
        """The verdict and the worst difference, for the serving path's reason."""
        dtype = str(self.dtype).removeprefix("torch.")
        verdict = "probe passed" if self.passed else f"probe failed ({self.cause})"
        noise = f" ({self.noise.describe()})" if self.dtype in MAX_TOLERANCES else ""
        if self.float32:
            return f"{verdict}: {self.float32}{noise}"
        return f"{verdict}: max |logprob difference| {self.max_difference:.1e} vs {self.tolerance:.2g} for {dtype}{noise}"

    def describe(self) -> str:
        """One line for the start-up log: what ran, what it measured."""
        plan = self.plan
        dtype = str(self.dtype).removeprefix("torch.")
        prefill = f"prefill in chunks of {plan.chunk_tokens}" if self.is_chunked else "prefill in one step"
        window = "" if plan.window is None else (
            f", window {plan.window} exercised" if plan.covers_window
            else f", window {plan.window} longer than the probe: not exercised")
        ties = f", {self.num_near_ties} near-tie(s)" if self.num_near_ties else ""
        noise = f" ({self.noise.describe()})" if self.dtype in MAX_TOLERANCES else ""
        verdict = "passed" if self.passed else f"FAILED: {self.cause}"
        measured = self.float32 or (f"max |logprob difference| {self.max_difference:.1e} vs {self.tolerance:.2g} "
                                    f"for {dtype}")
        return (f"probe {verdict} ({len(plan.prompts)} prompts of {plan.num_prompt_tokens} tokens, {prefill}, "
                f"{NUM_DECODE_STEPS} decode steps, {self.num_positions} positions, {measured}{noise}{ties}{window}, "
                f"{self.seconds:.2f} s, reference {self.reference_seconds:.2f} s)")


@dataclass
class _Collected:
    tokens: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    error: str | None = None
    is_finished: bool = False


def probe_engine(engine: Any, reference: Reference) -> ProbeResult:
    """Run the probe prompts through `engine` (any engine of the engine interface) and compare."""
    started = time.perf_counter()
    plan = reference.plan
    k = min(NUM_TOP_LOGPROBS, int(engine.vocab_size))
    params = SamplingParams(max_tokens=NUM_DECODE_STEPS + 1, temperature=0.0, ignore_eos=True,
                            logprobs=k, prompt_logprobs=k)
    seq_ids = [-1 - i for i in range(len(plan.prompts))]  # worker sequence ids count up from 0
    with _prefill_in_chunks(engine, plan.chunk_tokens) as is_chunked:
        for seq_id, prompt in zip(seq_ids, plan.prompts, strict=True):
            engine.add(seq_id, list(prompt), params)
        collected, cause = _run(engine, seq_ids, max_steps=4 * (plan.num_prompt_tokens + NUM_DECODE_STEPS) + 16)
    if cause:  # the run itself failed: nothing to compare
        return ProbeResult(cause, 0.0, reference.tolerance, reference.dtype, 0, 0, is_chunked, plan,
                           time.perf_counter() - started, reference.seconds, reference.noise)
    comparison, cause = _compare(reference, reference.tolerance, collected, seq_ids)
    float32 = ""
    if cause and reference.precise is not None:
        comparison, cause, float32 = _against_float32(reference, comparison, cause, collected, seq_ids)
    elif cause and reference.precise_note:
        cause = f"{cause} ({reference.precise_note})"
    return ProbeResult(cause, comparison.max_difference, comparison.tolerance, reference.dtype,
                       comparison.num_positions, comparison.num_near_ties, is_chunked, plan,
                       time.perf_counter() - started, reference.seconds, reference.noise, float32)


def _against_float32(reference: Reference, first: _Comparison, cause: str, collected: dict[int, _Collected],
                     seq_ids: list[int]) -> tuple[_Comparison, str, str]:
    """The second comparison, with the model's own float32 rows: the comparison that decides, the
    cause ("" when this one passes) and what it found, for the result's line ("" when it failed)."""
    assert reference.precise is not None
    rows = dataclasses.replace(reference, prompt_logprobs=reference.precise.prompt_logprobs,
                               output_logprobs=reference.precise.output_logprobs)
    second, second_cause = _compare(rows, reference.precise_tolerance, collected, seq_ids)
    if second_cause:
        return first, f"{cause}; against the model's own float32 forward: {second_cause}", ""
    dtype = str(reference.dtype).removeprefix("torch.")
    return second, "", (f"against the {dtype} reference {cause}; against the model's own float32 forward max "
                        f"|logprob difference| {second.max_difference:.1e} vs {second.tolerance:.2g} (twice its "
                        f"own {dtype} forward's {reference.noise.float32:.1e})")


def _compare(reference: Reference, tolerance: float, collected: dict[int, _Collected],
             seq_ids: list[int]) -> tuple[_Comparison, str]:
    """Every probe prompt's outputs against `reference`'s rows; the comparison and the first cause."""
    comparison = _Comparison(tolerance)
    for index, seq_id in enumerate(seq_ids):
        cause = comparison.check(reference, index, collected[seq_id])
        if cause:
            return comparison, cause
    return comparison, ""


@contextlib.contextmanager
def _prefill_in_chunks(engine: Any, chunk_tokens: int) -> Iterator[bool]:
    """Where the engine schedules under a token budget (the fast path's scheduler), lower it for the
    probe so each prompt prefills in chunks: a chunk attending to the cached ones is where a paged
    cache goes wrong. Yields whether it could."""
    scheduler: Any = getattr(engine, "scheduler", None)
    config = getattr(scheduler, "config", None)
    if not isinstance(config, SchedulerConfig) or config.max_num_batched_tokens <= chunk_tokens:
        yield isinstance(config, SchedulerConfig)  # a budget this small chunks the prompts already
        return
    scheduler.config = dataclasses.replace(config, max_num_batched_tokens=chunk_tokens)
    try:
        yield True
    finally:
        scheduler.config = config


def _run(engine: Any, seq_ids: list[int], max_steps: int) -> tuple[dict[int, _Collected], str]:
    """Step until the probe's sequences finish; their outputs and a failure cause ("" if none)."""
    collected = {seq_id: _Collected() for seq_id in seq_ids}
    try:
        for _ in range(max_steps):
            for out in engine.step():
                got = collected.get(out.seq_id)
                if got is None:
                    continue
                got.tokens += out.token_ids
                got.logprobs += out.logprobs
                got.prompt_logprobs = got.prompt_logprobs or out.prompt_logprobs
                got.error = got.error or out.error
                got.is_finished = got.is_finished or out.finish_reason is not None
            if all(c.is_finished for c in collected.values()):
                break
    finally:
        for seq_id, got in collected.items():
            if not got.is_finished:
                engine.abort(seq_id)
    for got in collected.values():
        if got.error:
            return collected, f"a probe step failed: {got.error}"
        if not got.is_finished:
            return collected, f"the probe did not finish in {max_steps} steps"
    return collected, ""


class _Comparison:
    """Compares an engine's probe outputs with the reference, keeping the worst difference seen."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.max_difference = 0.0
        self.num_positions = 0
        self.num_near_ties = 0

    def check(self, reference: Reference, index: int, got: _Collected) -> str:
        """The cause of a mismatch on probe prompt `index`, "" when it matches."""
        expected = reference.tokens[index]
        if len(got.tokens) != len(expected) or len(got.logprobs) != len(expected):
            return f"probe prompt {index} gave {len(got.tokens)} tokens and {len(got.logprobs)} logprobs, " \
                   f"expected {len(expected)}"
        if got.prompt_logprobs is None or len(got.prompt_logprobs) != reference.plan.num_prompt_tokens:
            return f"probe prompt {index}: the engine returned no prompt logprobs"
        for row, position in enumerate(reference.prompt_positions[index]):
            entry = got.prompt_logprobs[position + 1]
            assert entry is not None
            where = f"prompt position {position} of probe prompt {index}"
            cause = self._position(entry, entry.top[0][0], reference.prompt_logprobs[index][row], where)
            if cause:
                return cause
        for step, (token, entry) in enumerate(zip(got.tokens, got.logprobs, strict=True)):
            where = f"output token {step} of probe prompt {index}"
            cause = self._position(entry, token, reference.output_logprobs[index][step], where)
            if cause or token != expected[step]:  # a near-tie: the prefixes differ from here on
                return cause
        return ""

    def _position(self, entry: TokenLogprob, chosen: int, ref: torch.Tensor, where: str) -> str:
        """Compare one position: the engine's logprobs of its token and top k, and its greedy pick."""
        ids = [entry.token_id] + [token for token, _ in entry.top]
        got = torch.tensor([entry.logprob] + [value for _, value in entry.top], dtype=torch.float32)
        difference = float((got - ref[ids]).abs().max())
        self.num_positions += 1
        if not difference <= self.tolerance:  # NaN fails too
            self.max_difference = difference if difference == difference else float("inf")
            return (f"log-probabilities off by {difference:.2g} at {where} "
                    f"(tolerance {self.tolerance:.2g})")
        self.max_difference = max(self.max_difference, difference)
        best = int(ref.argmax())
        if chosen != best:
            gap = float(ref[best] - ref[chosen])
            if gap > self.tolerance:
                return (f"greedy token {chosen} instead of {best} at {where} (the model's own log-probabilities "
                        f"{float(ref[chosen]):.3f} vs {float(ref[best]):.3f})")
            self.num_near_ties += 1
        return ""
