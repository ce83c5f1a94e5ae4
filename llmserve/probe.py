"""The load-time probe: does an engine compute what the model itself computes?

Before a generation worker reports ready, two short prompts run through its engine (both in the
batch at once, each prefilled in at least two chunks, then a few greedy decode steps) and through
the model's own forward: one plain full forward per prefix, no cache. The engine's log-probabilities
(of every compared position's top k and chosen token, read through the engine interface like any
request's logprobs) must match the reference's within a tolerance per dtype, and its greedy tokens
must be the reference's except at near-ties (the reference's own log-probabilities of the two
tokens within the tolerance; beyond one the prefixes differ and that sequence is compared no
further). The reference comes first, from the model as loaded: the fast path changes the model
(its attention function, fused projections) when it builds its engine. This module plans the
prompts and computes the reference with its tolerance; `probe_run.py` runs an engine and compares.

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

import dataclasses
import inspect
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from llmserve.probe_noise import (
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
