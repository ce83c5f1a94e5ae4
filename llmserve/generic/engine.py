"""The generic path's engine: the model's own forward and cache, continuous batching per request.

It offers the worker what `LLMEngine` offers (`add`, `abort`, `fail`, `step`, `has_work`,
`last_scheduled`, `tokenizer`, `vocab_size`, `max_model_len`, `device`), so the worker and the API
never learn which path runs. A step admits waiting sequences (each prompt prefilled alone, through
a cache the model builds for itself, as `generate` does), decodes the running ones one token each,
samples every row at once with the shared sampler and reports through the shared bookkeeping
(`engine/outputs.py`).

Running sequences decode together in one left-padded `RowBatch` when the builder found that the
model's cache stacks and a stacked decode equals a single one (`layout` given); otherwise each
sequence decodes in a forward of its own. Prompts admitted in one step are prefilled in one padded
forward where that was found exact too (`batched_prefill`). A sequence leaves its batch the step
it finishes or the moment it is aborted, freeing its cache. Fault isolation: a prompt that fails
its prefill fails alone (a failed padded prefill is retried prompt by prompt); a failed decode is
retried one sequence at a time (each re-running its tokens so far), so only sequences that fail
on their own are failed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from llmserve.engine.detokenizer import TokenTexts
from llmserve.engine.outputs import SequenceOutput, TrackedSequence, check_stop, emit, token_logprob, track
from llmserve.engine.request import SamplingParams, Sequence, SequenceStatus, TokenLogprob, check_prompt
from llmserve.engine.sampler import (
    SampleResult,
    build_sampling_batch,
    check_sampling_params,
    prompt_logprob_table,
    sample,
)
from llmserve.generic.batch import RowBatch
from llmserve.generic.forward import ModelForward
from llmserve.generic.rows import CacheLayout, CannotStack
from llmserve.structured.decoding import StructuredDecoding

log = logging.getLogger(__name__)

_NO_LAYOUT = CacheLayout({}, frozenset())  # groups of one row: nothing to trim
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass
class _Row:
    """A sequence that samples this step, from these logits [V]."""

    tracked: TrackedSequence
    logits: torch.Tensor


class GenericEngine:
    """Request-level continuous batching over a model's own forward; owned by the worker's thread."""

    task = "generate"

    def __init__(self, forward: ModelForward, tokenizer: Any, stop_token_ids: frozenset[int], vocab_size: int,
                 max_model_len: int, layout: CacheLayout | None, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192, stream_interval: int = 1, seed: int = 0,
                 batched_prefill: bool = False) -> None:
        self.forward = forward
        self.tokenizer = tokenizer
        self.token_texts = TokenTexts(tokenizer)  # what most tokens add to a text, learnt once each
        self.stop_token_ids = stop_token_ids
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.layout = layout  # None: every sequence decodes alone
        self.batched_prefill = batched_prefill and layout is not None  # prompts of one step in one forward
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.stream_interval = stream_interval
        self.serving_path: Any = None  # set by the builder that chose this path
        self.structured = StructuredDecoding(tokenizer, vocab_size, stop_token_ids)  # grammar rows' masks
        self.last_scheduled: list[int] = []
        self._tracked: dict[int, TrackedSequence] = {}
        self._waiting: deque[int] = deque()
        self._groups: list[RowBatch] = []  # one when batching, one per sequence otherwise
        self._group_of: dict[int, RowBatch] = {}
        self._rejected: list[SequenceOutput] = []  # sequences whose state could not be built, reported next step
        self._generator = torch.Generator(device=forward.device)
        self._generator.manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return self.forward.device

    @property
    def has_work(self) -> bool:
        return bool(self._tracked) or bool(self._rejected)

    @property
    def num_running(self) -> int:
        return len(self._group_of)

    def add(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        """Queue a sequence; it is prefilled and joins the running batch at the next step."""
        try:
            check_prompt(prompt_ids, self.vocab_size, self.max_model_len)
            check_sampling_params(params, self.vocab_size)
            tracked = track(Sequence(seq_id, list(prompt_ids), params), self.tokenizer, self.device, self.token_texts)
        except Exception as exc:  # a bad request fails alone, at the next step
            log.info("sequence %d: refused: %s", seq_id, exc)
            self._rejected.append(SequenceOutput(seq_id, "", [], [], SequenceStatus.FINISHED_ERROR.finish_reason,
                                                 len(prompt_ids), 0, error=f"invalid request: {exc}"))
            return
        self._tracked[seq_id] = tracked
        self._waiting.append(seq_id)

    @torch.inference_mode()
    def abort(self, seq_id: int) -> SequenceOutput | None:
        """Stop a sequence now and free its cache; its final event, or None if unknown."""
        tracked = self._tracked.get(seq_id)
        if tracked is None:
            return None
        return self._finish(tracked, SequenceStatus.FINISHED_ABORTED)

    @torch.inference_mode()
    def fail(self, seq_ids: list[int], message: str) -> list[SequenceOutput]:
        """End sequences with an error (their step failed); frees their cache."""
        return [self._finish(t, SequenceStatus.FINISHED_ERROR, message)
                for seq_id in seq_ids if (t := self._tracked.get(seq_id)) is not None]

    @torch.inference_mode()
    def step(self) -> list[SequenceOutput]:
        """Prefill the admitted prompts, decode the running sequences, sample every row, report."""
        outputs, self._rejected = self._rejected, []
        self.last_scheduled = list(self._group_of)
        decoded, rejoining = self._decode(outputs)
        admitted, joining = self._admit(outputs)
        rows = decoded + admitted
        if rows:
            outputs += self._postprocess(rows)
        self._join(rejoining + joining)
        return outputs

    # ---- admission and prefill ---------------------------------------------------------------

    def _admit(self, outputs: list[SequenceOutput]) -> tuple[list[_Row], list[RowBatch]]:
        """Prefill waiting prompts within the token budget (at least one) and `max_num_seqs`:
        together in one padded forward where the plan allows, else (and on failure) alone."""
        admitted: list[TrackedSequence] = []
        budget = self.max_num_batched_tokens
        while self._waiting and self.num_running + len(admitted) < self.max_num_seqs:
            tracked = self._tracked[self._waiting[0]]
            if admitted and tracked.seq.num_prompt_tokens > budget:
                break
            self._waiting.popleft()
            budget -= tracked.seq.num_prompt_tokens
            self.last_scheduled.append(tracked.seq.seq_id)
            admitted.append(tracked)
        rows: list[_Row] = []
        groups: list[RowBatch] = []
        together = [t for t in admitted if self.batched_prefill and t.seq.params.prompt_logprobs is None]
        if len(together) > 1:
            try:
                rows, group = self._prefill_together(together)
                groups.append(group)
            except Exception:
                log.exception("prefill of %d prompts together failed; prefilling them alone", len(together))
                together = []
        alone = [t for t in admitted if t not in together] if len(together) > 1 else admitted
        for _, (row, group) in self._each_alone("prefill", alone, _same, self._prefill, outputs):
            rows.append(row)
            groups.append(group)
        return rows, groups

    def _prefill_together(self, tracked: list[TrackedSequence]) -> tuple[list[_Row], RowBatch]:
        """Prompts prefilled in one left-padded forward: their next-token logits and one batch."""
        cache, mask, logits = self.forward.prefill_batch([t.seq.all_ids for t in tracked])
        group = RowBatch.of([t.seq.seq_id for t in tracked], cache, mask, [t.seq.num_tokens for t in tracked])
        return [_Row(t, logits[i]) for i, t in enumerate(tracked)], group

    def _prefill(self, tracked: TrackedSequence) -> tuple[_Row, RowBatch]:
        """Run a sequence's tokens so far from an empty cache; its next-token logits and batch of one."""
        seq = tracked.seq
        wants_prompt_logprobs = seq.params.prompt_logprobs is not None and not seq.output_ids
        prefilled = self.forward.prefill(seq.all_ids, all_logits=wants_prompt_logprobs)
        if wants_prompt_logprobs:
            self._record_prompt_logprobs(tracked, prefilled.logits[:-1])
        group = RowBatch(seq.seq_id, prefilled.cache, seq.num_tokens, self.device)
        return _Row(tracked, prefilled.logits[-1]), group

    def _record_prompt_logprobs(self, tracked: TrackedSequence, logits: torch.Tensor) -> None:
        """logits [P - 1, V]: position p's row predicts prompt token p + 1."""
        seq = tracked.seq
        wanted = seq.params.prompt_logprobs or 0
        if seq.num_prompt_tokens < 2 or tracked.prompt_logprobs is None:
            return
        table = prompt_logprob_table(logits, seq.prompt_ids[1:], max(wanted, 1))
        for p, (token_id, logprob, top) in enumerate(table):
            tracked.prompt_logprobs[p + 1] = TokenLogprob(token_id, logprob, top[:wanted])

    # ---- decode ------------------------------------------------------------------------------

    def _decode(self, outputs: list[SequenceOutput]) -> tuple[list[_Row], list[RowBatch]]:
        """One token for every running sequence; a group whose forward fails is retried alone."""
        rows: list[_Row] = []
        retried: list[RowBatch] = []
        for group in list(self._groups):
            tracked = [self._tracked[seq_id] for seq_id in group.seq_ids]
            mask, positions = group.decode_inputs()
            try:
                logits, cache = self.forward.decode(group.cache, [t.seq.output_ids[-1] for t in tracked], mask,
                                                    positions)
            except Exception:
                log.exception("decode of %d sequences failed; retrying them one by one", group.num_rows)
                self._drop_group(group)
                for _, (row, alone) in self._each_alone("decode", tracked, _same, self._prefill, outputs):
                    rows.append(row)
                    retried.append(alone)
                continue
            group.advance(cache, mask)
            rows += [_Row(t, logits[i]) for i, t in enumerate(tracked)]
        return rows, retried

    # ---- batches -----------------------------------------------------------------------------

    def _join(self, groups: list[RowBatch]) -> None:
        """New groups into the running batch (when batching), else running on their own."""
        for group in groups:  # sequences that finished in the step that prefilled them leave at once
            group.remove({s for s in group.seq_ids if s not in self._tracked}, self.layout or _NO_LAYOUT)
        groups = [g for g in groups if g.num_rows]
        for group in groups:
            for seq_id in group.seq_ids:
                self._group_of[seq_id] = group
        if self.layout is None or not groups:
            self._groups += groups
            return
        if not self._groups:
            self._groups.append(groups.pop(0))
        main = self._groups[0]
        try:
            main.join(groups, self.layout)
        except (CannotStack, RuntimeError):  # a cache that would not stack: those rows run on their own
            log.exception("could not batch %d sequences; they decode alone", len(groups))
            self._groups += groups
            return
        for group in groups:
            for seq_id in group.seq_ids:
                self._group_of[seq_id] = main

    def _drop_group(self, group: RowBatch) -> None:
        self._groups.remove(group)
        for seq_id in group.seq_ids:
            self._group_of.pop(seq_id, None)

    def _free(self, seq_ids: set[int]) -> None:
        """Take finished sequences out of their batches (their cache rows freed at once)."""
        for group in {id(g): g for s in seq_ids if (g := self._group_of.pop(s, None)) is not None}.values():
            group.remove(seq_ids, self.layout or _NO_LAYOUT)
            if not group.num_rows and group in self._groups:
                self._groups.remove(group)
        for seq_id in seq_ids:
            if seq_id in self._waiting:
                self._waiting.remove(seq_id)

    # ---- sampling and outputs ----------------------------------------------------------------

    def _sample(self, rows: list[_Row]) -> SampleResult:
        seqs = [r.tracked.seq for r in rows]
        logits = torch.stack([r.logits for r in rows])  # [R, V]
        generators = [r.tracked.generator for r in rows]
        batch = build_sampling_batch(seqs, generators, self._generator, self.vocab_size, logits.device)
        batch.token_mask = self.structured.token_mask(seqs, logits.device)
        return sample(logits, batch)

    def _sample_isolated(self, rows: list[_Row], outputs: list[SequenceOutput]) -> list[tuple[_Row, SampleResult, int]]:
        """Each row with its sampled result and its row in it; if sampling the batch fails, rows are
        sampled one by one and those that fail alone end with an error."""
        try:
            result = self._sample(rows)
            return [(r, result, i) for i, r in enumerate(rows)]
        except Exception:
            log.exception("sampling %d rows failed; sampling them one by one", len(rows))
        sampled = self._each_alone("sampling", rows, _tracked_of, lambda r: self._sample([r]), outputs)
        return [(r, result, 0) for r, result in sampled]

    def _each_alone(self, stage: str, items: list[_Item], tracked_of: Callable[[_Item], TrackedSequence],
                    attempt: Callable[[_Item], _Result],
                    outputs: list[SequenceOutput]) -> list[tuple[_Item, _Result]]:
        """``attempt`` on each item by itself (the fallback once a batched ``stage`` failed): the items
        it served with their results; an item it fails on ends its sequence with an error, alone."""
        done: list[tuple[_Item, _Result]] = []
        for item in items:
            try:
                done.append((item, attempt(item)))
            except Exception as exc:
                tracked = tracked_of(item)
                log.exception("sequence %d: %s failed", tracked.seq.seq_id, stage)
                outputs.append(self._finish(tracked, SequenceStatus.FINISHED_ERROR, _message(stage, exc)))
        return done

    def _postprocess(self, rows: list[_Row]) -> list[SequenceOutput]:
        outputs: list[SequenceOutput] = []
        finished: set[int] = set()
        for r, result, row in self._sample_isolated(rows, outputs):
            tracked, seq = r.tracked, r.tracked.seq
            if seq.params.max_tokens == 0:  # prompt logprobs only (echo with max_tokens = 0)
                outputs.append(self._finish(tracked, SequenceStatus.FINISHED_LENGTH, free=False))
                finished.add(seq.seq_id)
                continue
            token_id = result.token_ids[row]
            seq.output_ids.append(token_id)
            tracked.pending_ids.append(token_id)
            if seq.params.logprobs is not None and result.logprobs is not None:
                tracked.pending_logprobs.append(token_logprob(result, row, seq.params.logprobs))
            status = check_stop(tracked, token_id, self.stop_token_ids)
            if status is None and seq.num_tokens >= self.max_model_len:
                status = SequenceStatus.FINISHED_LENGTH
            if status is not None:
                outputs.append(self._finish(tracked, status, free=False))
                finished.add(seq.seq_id)
            elif len(tracked.pending_ids) >= self.stream_interval:
                outputs.append(emit(tracked, None))
        self._free(finished)
        return outputs

    def _finish(self, tracked: TrackedSequence, status: SequenceStatus, error: str | None = None,
                free: bool = True) -> SequenceOutput:
        seq = tracked.seq
        seq.status = status
        del self._tracked[seq.seq_id]
        if free:
            self._free({seq.seq_id})
        output = emit(tracked, status.finish_reason)
        output.error = error
        return output


def _same(tracked: TrackedSequence) -> TrackedSequence:
    return tracked


def _tracked_of(row: _Row) -> TrackedSequence:
    return row.tracked


def _message(stage: str, exc: BaseException) -> str:
    return f"the {stage} step failed for this request: {type(exc).__name__}"
