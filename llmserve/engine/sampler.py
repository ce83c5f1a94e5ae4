"""Logits processing and sampling for a whole batch at once.

Each row of the batch has its own parameters; they travel as tensors so that the same few
kernels serve every row. Seeded rows draw from their own generator, so a seeded request gives
the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmserve.engine.request import SamplingParams, Sequence
from llmserve.engine.transfer import to_device


@dataclass
class SamplingBatch:
    """The per-row sampling parameters of one step, as tensors on the logits' device."""

    temperature: torch.Tensor  # [B] float32, 0 = greedy
    top_p: torch.Tensor  # [B] float32
    top_k: torch.Tensor  # [B] int64, vocab size = off
    min_p: torch.Tensor  # [B] float32
    presence: torch.Tensor  # [B] float32
    frequency: torch.Tensor  # [B] float32
    repetition: torch.Tensor  # [B] float32
    logit_bias: torch.Tensor | None  # [B, V] float32 added to the logits; None when no row has a bias
    output_ids: torch.Tensor | None  # [B, Lmax] int64 padded with vocab size; None without penalties
    prompt_ids: torch.Tensor | None  # [B, Pmax] int64 padded with vocab size; None without penalties
    generators: list[torch.Generator | None]
    default_generator: torch.Generator | None
    num_logprobs: int  # most top logprobs any row asked for; -1 when none asked
    logprob_rows: list[int]  # the rows that asked for logprobs
    all_greedy: bool
    argmax_only: bool  # every row's token is its argmax: greedy, no penalties, no bias
    uses_top_k_or_p: bool  # some row limits by rank or cumulative mass (needs a sort)
    uses_min_p: bool
    # [B, V] bool: the tokens a grammar allows each row (all True for rows without one); None when
    # no row has a grammar. Set by the engine from `llmserve/structured/decoding.py`.
    token_mask: torch.Tensor | None = None


def build_sampling_batch(
    seqs: list[Sequence],
    generators: list[torch.Generator | None],
    default_generator: torch.Generator | None,
    vocab_size: int,
    device: torch.device,
    pending_ids: torch.Tensor | None = None,
) -> SamplingBatch:
    """Gather the parameters of the sequences that sample this step.

    pending_ids: [B] int64 on `device`, each row's output token still on its way to the host (drawn
    by the step in flight; `vocab_size` where none), counted by the penalties like the others.
    """
    params = [s.params for s in seqs]
    # One host-to-device copy for all seven columns (top-k travels as float32: exact below 2**24; a
    # top-k past the vocabulary limits nothing, so it is clamped: any int fits the column).
    columns = torch.tensor(
        [[p.temperature, p.top_p, min(p.top_k, vocab_size) if p.top_k > 0 else vocab_size, p.min_p,
          p.presence_penalty, p.frequency_penalty, p.repetition_penalty] for p in params],
        dtype=torch.float32,
    ).t().contiguous()
    columns = to_device(columns, device)
    use_penalties = any(p.has_penalties for p in params)
    return SamplingBatch(
        temperature=columns[0],
        top_p=columns[1],
        top_k=columns[2].long(),
        min_p=columns[3],
        presence=columns[4],
        frequency=columns[5],
        repetition=columns[6],
        logit_bias=_bias_rows(params, vocab_size, device),
        output_ids=_output_ids(seqs, vocab_size, device, pending_ids) if use_penalties else None,
        prompt_ids=_pad([s.prompt_ids for s in seqs], vocab_size, device) if use_penalties else None,
        generators=generators,
        default_generator=default_generator,
        num_logprobs=max((p.logprobs for p in params if p.logprobs is not None), default=-1),
        logprob_rows=[row for row, p in enumerate(params) if p.logprobs is not None],
        all_greedy=all(p.is_greedy for p in params),
        argmax_only=all(p.takes_argmax for p in params),
        uses_top_k_or_p=any(0 < p.top_k < vocab_size or p.top_p < 1.0 for p in params),
        uses_min_p=any(p.min_p > 0 for p in params),
    )


# The float columns of `build_sampling_batch` and the ranges in which sampling means something.
_FLOAT32_MAX = torch.finfo(torch.float32).max
_FLOAT_RANGES = {
    "temperature": (0.0, _FLOAT32_MAX),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "presence_penalty": (-_FLOAT32_MAX, _FLOAT32_MAX),
    "frequency_penalty": (-_FLOAT32_MAX, _FLOAT32_MAX),
    "repetition_penalty": (torch.finfo(torch.float32).tiny, _FLOAT32_MAX),
}
_SEED_RANGE = (-(2**63), 2**64)  # what `torch.Generator.manual_seed` takes


def check_sampling_params(params: SamplingParams, vocab_size: int) -> None:
    """Raise ValueError naming the first value the batch tensors or a generator could not hold.

    Run when a sequence is added, so that `build_sampling_batch` and `make_generator` never raise
    for one row's values inside a batched step (which would fail every sequence in it).
    """
    for name, (low, high) in _FLOAT_RANGES.items():
        value = getattr(params, name)
        if not _is_number(value) or not low <= value <= high:
            raise ValueError(f"{name} = {_show(value)} is outside [{low:g}, {high:g}]")
    for name in ("top_k", "max_tokens"):
        if not _is_int(getattr(params, name)):
            raise ValueError(f"{name} = {_show(getattr(params, name))} is not an integer")
    if params.max_tokens < 0:
        raise ValueError(f"max_tokens = {params.max_tokens} is negative")
    if params.seed is not None and not (_is_int(params.seed) and _SEED_RANGE[0] <= params.seed < _SEED_RANGE[1]):
        raise ValueError(f"seed = {_show(params.seed)} is outside [-2**63, 2**64)")
    for name in ("logprobs", "prompt_logprobs"):
        k = getattr(params, name)
        if k is not None and not (_is_int(k) and 0 <= k <= vocab_size):
            raise ValueError(f"{name} = {_show(k)} is outside [0, {vocab_size}]")
    for token_id, bias in params.logit_bias:
        if not (_is_int(token_id) and 0 <= token_id < vocab_size):
            raise ValueError(f"logit_bias token id {_show(token_id)} is outside [0, {vocab_size})")
        if not _is_number(bias) or abs(bias) > _FLOAT32_MAX:
            raise ValueError(f"logit_bias value {_show(bias)} is not a finite float32 number")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """An int (compared exactly, however large) or a finite float."""
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _show(value: object) -> str:
    """A value for an error message, cut short (an int may have more digits than `str` will print)."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)[:40]


def argmax_ids(logits: torch.Tensor) -> torch.Tensor:
    """[B] int64: each row's argmax (its first maximal index; a NaN's where the row has one).

    On the CPU `max(dim).indices` gives the same index several times faster than `argmax` (torch
    2.13, [32, 4096] float32 on one core: ~65 against ~320 us), and greedy decoding takes one every
    step; elsewhere `argmax`, whose tie order is the one documented on every device.
    """
    if logits.device.type == "cpu":
        return logits.max(dim=-1).indices
    return logits.argmax(dim=-1)


def is_plain_greedy(params: list[SamplingParams]) -> bool:
    """Whether every row just takes its argmax: greedy, no penalties, no bias, no logprobs.

    Such a step needs nothing from the logits but the argmax, which a CUDA graph already took.
    """
    return all(p.takes_argmax and p.logprobs is None for p in params)


def _bias_rows(params: list[SamplingParams], vocab_size: int, device: torch.device) -> torch.Tensor | None:
    if not any(p.logit_bias for p in params):
        return None
    bias = torch.zeros(len(params), vocab_size, dtype=torch.float32)
    for row, p in enumerate(params):
        for token_id, value in p.logit_bias:
            bias[row, token_id] = value
    return to_device(bias, device)


def _output_ids(seqs: list[Sequence], vocab_size: int, device: torch.device,
                pending_ids: torch.Tensor | None) -> torch.Tensor:
    """[B, L] output ids padded with `vocab_size`, the pending tokens as the last column."""
    known = _pad([s.output_ids for s in seqs], vocab_size, device)
    return known if pending_ids is None else torch.cat([known, pending_ids.unsqueeze(1)], dim=1)


def _pad(rows: list[list[int]], pad: int, device: torch.device) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.int64, device=device)


@dataclass
class SampleResult:
    """Sampled tokens and, when asked, their logprobs and the top alternatives (on the CPU)."""

    token_ids: list[int]
    logprobs: list[float] | None
    top_ids: list[list[int]] | None
    top_logprobs: list[list[float]] | None


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Repetition (prompt and output), presence and frequency (output) penalties.

    logits: [B, V] float32. Returns new logits.
    """
    if batch.output_ids is None or batch.prompt_ids is None:
        return logits
    num_rows, vocab = logits.shape
    counts = torch.zeros(num_rows, vocab + 1, dtype=logits.dtype, device=logits.device)
    counts.scatter_add_(1, batch.output_ids, torch.ones_like(batch.output_ids, dtype=logits.dtype))
    counts = counts[:, :vocab]
    seen = counts > 0
    prompt_seen = torch.zeros(num_rows, vocab + 1, dtype=torch.bool, device=logits.device)
    prompt_seen.scatter_(1, batch.prompt_ids, True)
    seen_any = seen | prompt_seen[:, :vocab]
    rep = batch.repetition.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen_any, penalised, logits)
    logits = logits - batch.frequency.unsqueeze(1) * counts
    return logits - batch.presence.unsqueeze(1) * seen.to(logits.dtype)


def filter_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p; masked entries become -inf. logits: [B, V] float32.

    The sort over the vocabulary that top-k and top-p need is skipped when no row uses them (plain
    temperature sampling, the OpenAI default), which spares the step the costliest sampling kernel.
    """
    temperature = torch.where(batch.temperature > 0, batch.temperature, torch.ones_like(batch.temperature))
    logits = logits / temperature.unsqueeze(1)
    if not batch.uses_top_k_or_p:
        if batch.uses_min_p:
            probs = torch.softmax(logits, dim=-1)
            best = probs.max(dim=-1, keepdim=True).values
            logits = logits.masked_fill(probs < batch.min_p.unsqueeze(1) * best, float("-inf"))
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    ranks = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
    drop = ranks >= batch.top_k.unsqueeze(1)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays). A top_p
    # of 1 keeps everything: the cumulative sum's rounding can pass 1.0 in the tail.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    top_p = batch.top_p.unsqueeze(1)
    drop |= (mass_before > top_p) & (top_p < 1.0)
    drop |= probs < (batch.min_p.unsqueeze(1) * probs[:, :1])
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def sample_token_ids(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """One token per row, on the logits' device: [B] int64. logits: [B, V] (any float dtype)."""
    logits = apply_penalties(logits.float(), batch)
    if batch.logit_bias is not None:
        logits = logits + batch.logit_bias
    if batch.token_mask is not None:
        logits = logits.masked_fill(~batch.token_mask, float("-inf"))
    greedy_ids = argmax_ids(logits)
    if batch.all_greedy:
        return greedy_ids
    probs = torch.softmax(filter_logits(logits, batch), dim=-1)
    return torch.where(batch.temperature > 0, _draw(probs, batch.generators, batch.default_generator), greedy_ids)


@dataclass
class DeviceSample:
    """A step's sampled tokens on the device, and the one tensor the host reads of them."""

    token_ids: torch.Tensor  # [B] int64
    for_host: torch.Tensor  # token_ids, or with logprobs float64 [B + R * (1 + 2k)] (see sample_on_device)
    logprob_rows: list[int]  # the R rows whose logprobs follow the token ids
    num_logprobs: int  # k


def sample_on_device(logits: torch.Tensor, batch: SamplingBatch,
                     greedy_ids: torch.Tensor | None = None) -> DeviceSample:
    """Pick one token per row without reading anything back. logits: [B, V] (any float dtype);
    `greedy_ids`: their argmax when already taken (a graph does), used where every row is greedy.

    Logprobs (of the raw distribution) are computed for the rows that asked only, so a few such
    requests cost a large batch little. The host reads one tensor: the token ids, or, with
    logprobs, float64 token ids (exact for any vocabulary) followed by R rows of (the token's
    logprob, the top k ids, their logprobs) flattened; `read_sample` turns it into a `SampleResult`.
    """
    if batch.argmax_only:
        token_ids = greedy_ids if greedy_ids is not None else argmax_ids(logits)
    else:
        token_ids = sample_token_ids(logits, batch)
    rows = batch.logprob_rows
    if not rows:
        return DeviceSample(token_ids, token_ids, rows, 0)
    k = max(batch.num_logprobs, 1)
    index = _rows_index(rows, len(token_ids), logits.device)
    raw_logprobs = torch.log_softmax(logits[index].float(), dim=-1)
    chosen = raw_logprobs.gather(1, token_ids[index].unsqueeze(1))
    top_values, top_ids = raw_logprobs.topk(k, dim=-1)
    per_row = torch.cat([chosen.double(), top_ids.double(), top_values.double()], dim=1)
    return DeviceSample(token_ids, torch.cat([token_ids.double(), per_row.flatten()]), rows, k)


def _rows_index(rows: list[int], num_rows: int, device: torch.device) -> torch.Tensor | slice:
    """An index selecting `rows` (sorted) of a batch: a slice when they are all of it."""
    if len(rows) == num_rows:
        return slice(None)
    return to_device(torch.tensor(rows, dtype=torch.int64), device)


def read_sample(sample: DeviceSample, values: torch.Tensor) -> SampleResult:
    """`sample.for_host`, copied to the host as `values`, as per-row lists (rows that did not ask
    for logprobs get a logprob of 0.0 and no alternatives: nobody reads them)."""
    if not sample.logprob_rows:
        return SampleResult(values.tolist(), None, None, None)
    num_rows, k = len(sample.token_ids), sample.num_logprobs
    token_ids = values[:num_rows].long().tolist()
    per_row = values[num_rows:].view(len(sample.logprob_rows), 1 + 2 * k)
    logprobs: list[float] = [0.0] * num_rows
    top_ids: list[list[int]] = [[] for _ in range(num_rows)]
    top_logprobs: list[list[float]] = [[] for _ in range(num_rows)]
    chosen, ids, values_k = per_row[:, 0].tolist(), per_row[:, 1:1 + k].long().tolist(), per_row[:, 1 + k:].tolist()
    for i, row in enumerate(sample.logprob_rows):
        logprobs[row], top_ids[row], top_logprobs[row] = chosen[i], ids[i], values_k[i]
    return SampleResult(token_ids, logprobs, top_ids, top_logprobs)


def sample(logits: torch.Tensor, batch: SamplingBatch) -> SampleResult:
    """Pick one token per row and read the result back at once. logits: [B, V] (any float dtype)."""
    drawn = sample_on_device(logits, batch)
    return read_sample(drawn, drawn.for_host.cpu())


def _draw(
    probs: torch.Tensor, generators: list[torch.Generator | None], default: torch.Generator | None
) -> torch.Tensor:
    """One multinomial draw per row (exponential race), seeded rows from their own generator.

    probs: [B, V] float32. Returns [B] int64.
    """
    noise = torch.empty_like(probs).exponential_(generator=default)
    for row, generator in enumerate(generators):
        if generator is not None:
            noise[row].exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A generator for a seeded request, None for unseeded ones."""
    if params.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed)
    return generator


def prompt_logprob_table(logits: torch.Tensor, targets: list[int], k: int) -> list[tuple[int, float, list]]:
    """For each row: (target token, its logprob, the top k (token, logprob) pairs).

    logits: [P, V]; targets: P token ids. One device-to-host copy.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(targets, dtype=torch.int64, device=logits.device)
    chosen = logprobs.gather(1, target.unsqueeze(1))
    top_values, top_ids = logprobs.topk(k, dim=-1)
    packed = torch.cat([chosen.double(), top_ids.double(), top_values.double()], dim=1).cpu().tolist()
    return [(t, row[0], list(zip((int(i) for i in row[1:1 + k]), row[1 + k:], strict=True)))
            for t, row in zip(targets, packed, strict=True)]
