"""The load-time probe: does an engine compute what the model itself computes?

Before a generation worker reports ready, two short prompts run through its engine (both in the
batch at once, each prefilled in at least two chunks, then a few greedy decode steps) and through
the model's own forward: one plain full forward per prefix, no cache. The engine's log-probabilities
(of every compared position's top k and chosen token, read through the engine interface like any
request's logprobs) must match the reference's within a tolerance per dtype, and its greedy tokens
must be the reference's except at near-ties (the reference's own log-probabilities of the two
tokens within the tolerance; beyond one the prefixes differ and that sequence is compared no
further). The reference comes first, from the model as loaded: the fast path changes the model
(its attention function, fused projections) when it builds its engine.

Tolerances, the largest absolute log-probability difference accepted, set from measuring
transformers against itself (eager attention vs SDPA, a disagreement nobody calls a bug):

- float32 5e-3: eager vs SDPA 2e-6 on the tiny models (CPU); the fast path's Triton kernels with
  CUDA graphs and the compiled forward were 1.6e-3 off `generate` on the GPU family check
  (benchmarks/RESULTS.md, run 16). A missing logit soft-cap moves log-probabilities by 1e-2 to 1.
- bfloat16 0.25: eager vs SDPA 1.3e-2 on the tiny models (CPU); on a 1B model on the GPU, with
  logits of magnitude 16-32 where one bfloat16 step is 0.125, the fast path was 0.094 off and
  transformers' own divergences were near-ties up to 0.125 (RESULTS.md, runs 10-15): two steps.
- float16 0.03: 3 more mantissa bits than bfloat16, 8 times finer (eager vs SDPA 1.5e-3 on the tiny
  models, CPU).

In half precision these are floors: a model's own rounding can be larger (on the H200, random
Gemma 3 disagreed with itself by 0.52 between eager and SDPA in bfloat16, an MoE's router flips an
expert on a near-tie). So the reference also measures the model's own noise at its dtype
(`llmserve/probe_noise.py`): how far its own forward moves when it runs the way serving runs it,
with its own cache (cached vs full), and how far transformers' two attention implementations of it
are apart on the same prompts (eager vs SDPA, where SDPA computes the same attention: not with a
soft-cap, sinks or ALiBi). The tolerance is twice the larger, between the floor and
`MAX_TOLERANCES` (four floors). An engine that fails that comparison gets a second one against the
model's own float32 forward (`llmserve/probe_precise.py`): it may be as far from it as twice the
half-precision reference is. A feature left out (a soft-cap, a window, sinks) is still held to the
float32 probe and to the float32 model matrix, which leave no such room.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from llmserve.engine.request import SamplingParams, TokenLogprob
from llmserve.engine.scheduler import SchedulerConfig
from llmserve.probe_noise import (
    NUM_TOP_LOGPROBS,
    OwnNoise,
    log_softmax_rows,
    own_cache_disagreement,
    own_implementations_disagreement,
)
from llmserve.probe_precise import Precise, own_float32_rows, why_no_float32

TOLERANCES: Mapping[torch.dtype, float] = MappingProxyType(
    {torch.float32: 5e-3, torch.bfloat16: 0.25, torch.float16: 0.03}
)
"""Largest absolute log-probability difference accepted, by the dtype the model computes in (floors in
half precision, see the module docstring)."""
MAX_TOLERANCES: Mapping[torch.dtype, float] = MappingProxyType({torch.bfloat16: 1.0, torch.float16: 0.12})
"""The most a half-precision tolerance grows to with the model's own disagreement."""
NUM_DECODE_STEPS = 4
"""Decode steps after each prompt's prefill (which samples the first output token)."""
MIN_PROMPT_TOKENS = 40
TOKENS_PAST_WINDOW = 24
"""A windowed model's probe prompts run this far past its smallest window."""
MAX_PROMPT_TOKENS = 4608
"""The probe's bound on accelerators: past Mistral-7B's 4,096-token window (a reference forward of
that many tokens is a fraction of a second on a GPU); longer windows are not exercised, and the log
line says so."""
MAX_PROMPT_TOKENS_CPU = 1024
"""The bound on the CPU, where the reference's forwards of 4k tokens take seconds even for a tiny model."""
_NUM_EDGE_POSITIONS = 16
_TEXTS = (
    "The quick brown fox jumps over the lazy dog. A server answers each request with the tokens "
    "its model predicts, one after another, and every one of them should be the model's own. ",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "print([fibonacci(i) for i in range(10)])\n# 0 1 1 2 3 5 8 13 21 34\n",
)


@dataclass(frozen=True)
class ProbePlan:
    """The probe's prompts and how they are run."""

    prompts: tuple[tuple[int, ...], ...]
    """Two prompts of the same length."""
    chunk_tokens: int
    """The engine's token budget per step during the probe: each prompt prefills in >= 2 chunks."""
    window: int | None
    """The model's smallest attention window (sliding or chunked), None without one."""

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompts[0])

    @property
    def covers_window(self) -> bool:
        return self.window is None or self.num_prompt_tokens > self.window


@dataclass(frozen=True)
class Reference:
    """The model's own log-probabilities for the probe prompts, each row [V] float32 on the CPU."""

    plan: ProbePlan
    dtype: torch.dtype
    prompt_positions: tuple[tuple[int, ...], ...]
    """Per prompt, the compared positions p (row p predicts prompt token p + 1)."""
    prompt_logprobs: tuple[torch.Tensor, ...]
    """Per prompt, [len(prompt_positions), V]."""
    tokens: tuple[tuple[int, ...], ...]
    """Per prompt, the greedy continuation: NUM_DECODE_STEPS + 1 tokens."""
    output_logprobs: tuple[torch.Tensor, ...]
    """Per prompt, [NUM_DECODE_STEPS + 1, V]: row i is the distribution tokens[i] was taken from."""
    seconds: float = 0.0
    """What computing it took."""
    noise: OwnNoise = OwnNoise()
    """Half precision: how far the model's own forward moves from these rows (nothing measured in float32)."""
    precise: Precise | None = None
    """Half precision: the model's own float32 rows at the same positions, where it could run them."""
    precise_note: str = ""
    """Why there are no float32 rows ("" when there are, or in float32)."""

    @property
    def tolerance(self) -> float:
        return self._bounded(2 * self.noise.largest)

    @property
    def precise_tolerance(self) -> float:
        """The bound against the float32 rows: twice the half-precision reference's own distance from
        them, capped at twice `MAX_TOLERANCES` (that distance is the model's own rounding, measured
        against the exact answer, not one rounding against another: random Gemma 3 is 1.0 from its
        float32 forward in bf16, on the CPU and on the H200)."""
        return self._bounded(2 * (self.noise.float32 or 0.0), cap_factor=2.0)

    def _bounded(self, value: float, cap_factor: float = 1.0) -> float:
        floor = TOLERANCES.get(self.dtype, TOLERANCES[torch.bfloat16])
        cap = MAX_TOLERANCES.get(self.dtype)
        return floor if cap is None else min(cap_factor * cap, max(floor, value))


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


def smallest_window(hf_config: Any) -> int | None:
    """The smallest sliding or chunked attention window the model's config declares, if any."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    keys = ["attention_chunk_size"]
    if getattr(text, "use_sliding_window", True) is not False:
        keys.append("sliding_window")
    windows = [v for k in keys if isinstance(v := getattr(text, k, None), int) and not isinstance(v, bool) and v > 0]
    return min(windows, default=None)


def plan_probe(tokenizer: Any, window: int | None, max_model_len: int, device: torch.device) -> ProbePlan:
    """Two text prompts long enough to pass `window`, short enough for the context and the device's bound."""
    wanted = max(MIN_PROMPT_TOKENS, window + TOKENS_PAST_WINDOW if window else 0)
    bound = MAX_PROMPT_TOKENS if device.type == "cuda" else MAX_PROMPT_TOKENS_CPU
    length = max(2, min(wanted, bound, max_model_len - NUM_DECODE_STEPS - 1))
    prompts = tuple(_prompt_ids(tokenizer, text, length) for text in _TEXTS)
    return ProbePlan(prompts, chunk_tokens=-(-length // 2), window=window)


def _prompt_ids(tokenizer: Any, text: str, length: int) -> tuple[int, ...]:
    """`length` ids of `text` repeated (special tokens such as BOS as the tokenizer adds them)."""
    once = len(tokenizer(text).input_ids)
    ids = tokenizer(text * (length // max(once - 2, 1) + 2)).input_ids
    return tuple(int(i) for i in ids[:length])


@torch.inference_mode()
def compute_reference(model: torch.nn.Module, plan: ProbePlan, device: torch.device, dtype: torch.dtype) -> Reference:
    """The model's own log-probabilities on the probe: a full forward per prefix, no cache."""
    started = time.perf_counter()
    takes_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    positions, prompt_rows, tokens, output_rows = [], [], [], []
    for prompt in plan.prompts:
        kept = compared_positions(len(prompt), plan.chunk_tokens)
        rows = log_softmax_rows(model, list(prompt), kept + [len(prompt) - 1], device, takes_keep)  # [P + 1, V]
        outputs = [rows[-1]]
        ids = list(prompt) + [int(rows[-1].argmax())]
        for _ in range(NUM_DECODE_STEPS):
            row = log_softmax_rows(model, ids, [len(ids) - 1], device, takes_keep)[0]  # [V]
            outputs.append(row)
            ids.append(int(row.argmax()))
        positions.append(tuple(kept))
        prompt_rows.append(rows[:-1])
        tokens.append(tuple(ids[len(prompt):]))
        output_rows.append(torch.stack(outputs))
    reference = Reference(plan, dtype, tuple(positions), tuple(prompt_rows), tuple(tokens), tuple(output_rows))
    if dtype in MAX_TOLERANCES:  # float32 has no room to widen: nothing measured
        implementations, note = own_implementations_disagreement(model, reference, device)
        noise = OwnNoise(own_cache_disagreement(model, reference, device), implementations, note)
        precise, own, precise_note = _float32_rows(model, reference, device)
        reference = dataclasses.replace(reference, noise=dataclasses.replace(noise, float32=own), precise=precise,
                                        precise_note=precise_note)
    return dataclasses.replace(reference, seconds=time.perf_counter() - started)


def _float32_rows(model: torch.nn.Module, reference: Reference,
                  device: torch.device) -> tuple[Precise | None, float | None, str]:
    """The model's own float32 rows and its bf16 distance from them, or why there are none."""
    why = why_no_float32(model, reference.dtype, device)
    if why:
        return None, None, f"no float32 forward ({why})"
    try:
        precise, own = own_float32_rows(model, reference, device)
    except Exception as exc:  # e.g. remote code that casts to a fixed dtype: no second chance
        text = str(exc).strip().split("\n")[0][:160]
        return None, None, f"no float32 forward ({type(exc).__name__}: {text})"
    return precise, own, ""


def compared_positions(num_tokens: int, chunk_tokens: int) -> list[int]:
    """Prompt positions whose predictions are compared: all of a short prompt; of a long one the
    first and last ones and those around the chunk boundary (bounding the reference's logits)."""
    last = num_tokens - 1  # position num_tokens - 1 predicts the first output token, compared apart
    if last <= 6 * _NUM_EDGE_POSITIONS:
        return list(range(last))
    edge = _NUM_EDGE_POSITIONS
    kept = set(range(edge)) | set(range(chunk_tokens - edge, chunk_tokens + edge)) | set(range(last - 3 * edge, last))
    return sorted(p for p in kept if 0 <= p < last)


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
