"""One worker's engine: add and abort sequences, and `step()` = schedule, run, postprocess.

Single-threaded: the worker's thread owns it. Every step returns the `SequenceOutput` events of
that step (new text, token ids, logprobs, finish reason).

With `async_scheduling` (CUDA), a step draws its tokens on the device (logprobs and penalties
included), then schedules and queues the next step before reading them back: the next step takes
those tokens straight from the device (`Sequence.num_pending_tokens`), so the GPU never waits for
the host's bookkeeping, detokenizing and streaming, which run while it computes. Penalties of the
next step count each row's in-flight token from the device too. A sequence that turns out to have
stopped wastes one row of that next step; one that is sure to stop (its last allowed token) is not
scheduled ahead. Only prompt logprobs are read at once, when their step is queued.

Fault isolation: one request's values never fail another's. `add` checks them against what the
batch tensors, generators and the model's embedding can hold, and builds the sequence's state in a
guard, so a bad one ends that sequence alone with an error event. A batched step that fails all the
same is undone (computed counts and seeded generators as before it, the step queued ahead dropped)
and its sequences rerun synchronously in halves, older first, until the one failing on its own is
found and failed alone (`_recover`): innocent streams go on token-exact.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from llmserve.engine.cuda_graphs import StepLogits
from llmserve.engine.detokenizer import TokenTexts
from llmserve.engine.kv_cache import BlockPool
from llmserve.engine.outputs import SequenceOutput, check_stop, emit, token_logprob, track
from llmserve.engine.outputs import TrackedSequence as _Tracked
from llmserve.engine.request import SamplingParams, Sequence, SequenceStatus, TokenLogprob, check_prompt
from llmserve.engine.runner import ModelRunner, Readback
from llmserve.engine.sampler import (
    DeviceSample,
    SampleResult,
    SamplingBatch,
    argmax_ids,
    build_sampling_batch,
    check_sampling_params,
    is_plain_greedy,
    prompt_logprob_table,
    read_sample,
    sample,
    sample_on_device,
)
from llmserve.engine.scheduler import ScheduledSeq, Scheduler
from llmserve.engine.serving_path import ServingPath
from llmserve.engine.transfer import to_device
from llmserve.structured.decoding import StructuredDecoding

log = logging.getLogger(__name__)

GeneratorStates = list[tuple[torch.Generator, torch.Tensor]]


@dataclass
class _Launched:
    """A step queued on the device, its sampled tokens not read yet."""

    scheduled: list[ScheduledSeq]
    sampling: list[Sequence]  # the rows that sample, in row order
    step: StepLogits
    drawn: DeviceSample | None  # the tokens drawn on the device (with logprobs, if asked); None: host samples
    readback: Readback | None  # what the host reads of them, on its way
    computed_before: list[int]  # each scheduled sequence's num_computed_tokens before the step (to undo it)
    generator_states: GeneratorStates  # the sampling rows' seeded generators before the step drew
    # Queued ahead with grammar rows whose previous token is still on its way: the forward runs, the
    # draw waits for that step's tokens (the grammar's next mask needs them): (previous step, its rows).
    draw_after: tuple[_Launched, dict[int, int]] | None = None

    @property
    def token_ids(self) -> torch.Tensor | None:
        """[S] the step's tokens on the device."""
        return self.drawn.token_ids if self.drawn is not None else None


class LLMEngine:
    """Continuous batching over one model on one device."""

    def __init__(
        self,
        runner: ModelRunner,
        scheduler: Scheduler,
        tokenizer: Any,
        stop_token_ids: frozenset[int],
        vocab_size: int,
        max_model_len: int,
        stream_interval: int = 1,
        seed: int = 0,
        async_scheduling: bool = False,
    ) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.token_texts = TokenTexts(tokenizer)  # what most tokens add to a text, learnt once each
        self.stop_token_ids = stop_token_ids
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.stream_interval = stream_interval
        self.async_scheduling = async_scheduling
        self.serving_path: ServingPath | None = None  # which path this is and why: set by the builder
        self._tracked: dict[int, _Tracked] = {}
        self._in_flight: _Launched | None = None  # the step scheduled ahead, not read back yet
        self._refused: list[SequenceOutput] = []  # error events of sequences `add` refused, for the next step
        self.last_scheduled: list[int] = []  # sequence ids of the latest steps, failed together on error
        self._generator = torch.Generator(device=runner.device)
        self._generator.manual_seed(seed)
        self.structured = StructuredDecoding(tokenizer, vocab_size, stop_token_ids)  # grammar rows' masks

    @property
    def pool(self) -> BlockPool:
        return self.scheduler.pool

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def has_work(self) -> bool:
        return bool(self._tracked) or self._in_flight is not None or bool(self._refused)

    def add(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        """Queue a new sequence; it joins the running batch at a step boundary.

        Values no batched step could run (a token id outside the vocabulary, a seed no generator
        takes, a NaN temperature, ...) never reach a batch: the next step reports this sequence
        finished with an error, and nothing else.
        """
        try:
            check_prompt(prompt_ids, self.vocab_size, self.max_model_len)
            check_sampling_params(params, self.vocab_size)
            seq = Sequence(seq_id, list(prompt_ids), params)
            tracked = track(seq, self.tokenizer, self.runner.device, self.token_texts)
        except Exception as exc:  # this request's own values: it alone fails
            num_prompt_tokens = len(prompt_ids) if isinstance(prompt_ids, list) else 0
            self._refused.append(SequenceOutput(seq_id, "", [], [], SequenceStatus.FINISHED_ERROR.finish_reason,
                                                num_prompt_tokens, 0, error=f"invalid request: {exc}"))
            return
        self._tracked[seq_id] = tracked
        self.scheduler.add(seq)

    def abort(self, seq_id: int) -> SequenceOutput | None:
        """Stop a sequence now and free its cache; its final event, or None if unknown."""
        tracked = self._tracked.get(seq_id)
        if tracked is None:
            return None
        return self._finish(tracked, SequenceStatus.FINISHED_ABORTED)

    def fail(self, seq_ids: list[int], message: str) -> list[SequenceOutput]:
        """End sequences with an error (their step failed); frees their cache."""
        outputs = []
        for seq_id in seq_ids:
            tracked = self._tracked.get(seq_id)
            if tracked is not None:
                outputs.append(self._finish(tracked, SequenceStatus.FINISHED_ERROR, message))
        return outputs

    def step(self) -> list[SequenceOutput]:
        """Schedule, run one forward for the whole batch, sample, and report.

        With async scheduling the step reported may be the one queued by the previous call, and
        the next one is queued before this one's tokens are read. A step that fails is undone and
        its sequences rerun apart (`_recover`).
        """
        if self._refused:  # reported on their own: nothing that may fail below can lose them
            refused, self._refused = self._refused, []
            return refused
        launched, self._in_flight = self._in_flight, None
        try:
            if launched is None:
                launched = self._launch(self.scheduler.schedule(), None)
                if launched is None:
                    return []
            if self.async_scheduling and launched.readback is not None:
                self._in_flight = self._launch_ahead(launched)
            outputs = self._complete(launched)
        except Exception as exc:
            log.warning("a batched step failed (%s); rerunning its sequences apart", type(exc).__name__)
            self._undo(self._in_flight, launched)
            self._in_flight = None
            return self._recover()
        except BaseException:
            self._in_flight = None
            raise
        if self._in_flight is not None and self._in_flight.draw_after is not None:
            self._in_flight = self._draw_deferred(self._in_flight)
        return outputs

    def _draw_deferred(self, launched: _Launched) -> _Launched | None:
        """Draw the tokens of a step queued ahead with grammar rows, now that the step before it has
        been read and its tokens advanced the grammars (the forward ran on the device meanwhile). If
        drawing fails, the queued step is undone: the next `step` schedules its sequences afresh (and
        a failure there is isolated as any step's is)."""
        assert launched.draw_after is not None
        prev, rows = launched.draw_after
        try:
            drawn = self._draw_on_device(launched.step, launched.sampling, prev, rows)
            readback = self.runner.start_readback(drawn.for_host) if drawn is not None else None
        except Exception as exc:
            log.warning("drawing a queued step's tokens failed (%s); its sequences run again", type(exc).__name__)
            self._undo(launched)
            return None
        return dataclasses.replace(launched, drawn=drawn, readback=readback, draw_after=None)

    def _undo(self, *steps: _Launched | None) -> None:
        """Put the sequences of failed steps (newest first) back as before them: computed counts (a
        sequence preempted or finished since starts over anyway), seeded generators, nothing pending."""
        for launched in steps:
            if launched is None:
                continue
            for item, before in zip(launched.scheduled, launched.computed_before, strict=True):
                seq = item.seq
                seq.num_pending_tokens = 0
                if seq.num_computed_tokens == before + item.num_new_tokens:
                    seq.num_computed_tokens = before
            _restore_generators(launched.generator_states)

    def _recover(self) -> list[SequenceOutput]:
        """After a failed (and undone) step: schedule again and run the batch in two halves, older
        sequences first, each synchronously; a half that fails is split again, and a sequence that
        fails alone is failed alone. A bad row costs about 2 log2(batch) extra forwards."""
        scheduled = self.scheduler.schedule()
        if len(scheduled) <= 1:
            return self._run_part(scheduled)
        half = len(scheduled) // 2
        return self._run_part(scheduled[:half]) + self._run_part(scheduled[half:])

    def _run_part(self, part: list[ScheduledSeq]) -> list[SequenceOutput]:
        """One synchronous step of `part` alone; if it fails, undone and split (see `_recover`)."""
        launched = None
        try:
            launched = self._launch(part, None)
            return self._complete(launched) if launched is not None else []
        except Exception as exc:
            self._undo(launched)
            if len(part) > 1:
                half = len(part) // 2
                return self._run_part(part[:half]) + self._run_part(part[half:])
            log.exception("sequence %d fails a step on its own", part[0].seq.seq_id)
            return self.fail([part[0].seq.seq_id], f"the model step failed: {type(exc).__name__}")

    def _launch(self, scheduled: list[ScheduledSeq], prev: _Launched | None) -> _Launched | None:
        """Queue a step on the device (prompt logprobs are read at once); None if nothing runs."""
        if not scheduled:
            return None
        ids = [item.seq.seq_id for item in scheduled]
        self.last_scheduled = ids if prev is None else [item.seq.seq_id for item in prev.scheduled] + ids
        sampling = [item.seq for item in scheduled if item.samples]
        saved = self._generator_states(sampling)
        try:
            rows = None if prev is None else {seq.seq_id: row for row, seq in enumerate(prev.sampling)}
            step = (self.runner.execute(scheduled) if prev is None
                    else self.runner.execute(scheduled, prev.token_ids, rows))
            if step.logits.shape[0] > len(sampling):
                self._record_prompt_logprobs(scheduled, step.logits[len(sampling):])
            # A grammar row decoding the token still in flight cannot be masked yet: draw later.
            draw_after = None
            if prev is not None and rows is not None and any(
                    seq.params.grammar is not None and seq.num_pending_tokens for seq in sampling):
                draw_after = (prev, rows)
            drawn = None if draw_after else self._draw_on_device(step, sampling, prev, rows)
            readback = self.runner.start_readback(drawn.for_host) if drawn is not None else None
        except Exception:
            _restore_generators(saved)  # a launch that failed has drawn nothing
            raise
        return _Launched(scheduled, sampling, step, drawn, readback, self._advance(scheduled), saved, draw_after)

    def _generator_states(self, seqs: list[Sequence]) -> GeneratorStates:
        """The seeded generators of `seqs` with their states, so a failed step can be undone."""
        generators = (t.generator for s in seqs if (t := self._tracked.get(s.seq_id)) is not None)
        return [(g, g.get_state()) for g in generators if g is not None]

    def _draw_on_device(self, step: StepLogits, seqs: list[Sequence], prev: _Launched | None,
                        rows: dict[int, int] | None) -> DeviceSample | None:
        """The step's tokens [S] drawn on the device: plain greedy always (its argmax only), every
        step with async scheduling. None where the host samples after reading the logits."""
        if not seqs:
            return None
        if is_plain_greedy([s.params for s in seqs]):
            ids = step.greedy_ids if step.greedy_ids is not None else argmax_ids(step.logits[: len(seqs)])
            return DeviceSample(ids, ids, [], 0)
        if not self.async_scheduling:
            return None
        logits = step.logits[: len(seqs)]
        batch = self._sampling_batch(logits, seqs, self._pending_ids(seqs, prev, rows))
        return sample_on_device(logits, batch, step.greedy_ids)

    def _pending_ids(self, seqs: list[Sequence], prev: _Launched | None,
                     rows: dict[int, int] | None) -> torch.Tensor | None:
        """For penalties: each row's token drawn by the step in flight (`vocab_size` where none), [S]
        on the device. None when no row has penalties or no step is in flight."""
        if prev is None or prev.token_ids is None or rows is None or not any(s.params.has_penalties for s in seqs):
            return None
        source = to_device(torch.tensor([rows[s.seq_id] if s.num_pending_tokens else -1 for s in seqs],
                                         dtype=torch.int64), prev.token_ids.device)
        return torch.where(source >= 0, prev.token_ids[source.clamp(min=0)], self.vocab_size)

    def _launch_ahead(self, launched: _Launched) -> _Launched | None:
        """Schedule and queue the next step while `launched` runs: its sampling sequences that may
        go on decode their pending token, and the scheduler may admit waiting ones as usual."""
        for seq in launched.sampling:
            params = seq.params
            # A grammar row goes on too: its forward is queued now, its draw waits for its token
            # (see `_draw_deferred`).
            if seq.num_output_tokens + 1 < params.max_tokens and seq.num_tokens + 1 < self.max_model_len:
                seq.num_pending_tokens = 1
        return self._launch(self.scheduler.schedule(), launched)

    def _advance(self, scheduled: list[ScheduledSeq]) -> list[int]:
        """Count a queued step's tokens as computed: the next step is scheduled after them. Returns
        the counts before (see `_undo`)."""
        before = [item.seq.num_computed_tokens for item in scheduled]
        for item in scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
        return before

    def _complete(self, launched: _Launched) -> list[SequenceOutput]:
        """Read a step's tokens and report."""
        return self._postprocess(launched.scheduled, launched.sampling, self._result(launched))

    def _result(self, launched: _Launched) -> SampleResult | None:
        """A step's sampled tokens on the host: read back, or sampled now (synchronous steps)."""
        if launched.drawn is not None and launched.readback is not None:
            return read_sample(launched.drawn, launched.readback.wait())
        if not launched.sampling:
            return None
        logits = launched.step.logits[: len(launched.sampling)]
        return sample(logits, self._sampling_batch(logits, launched.sampling))

    def _record_prompt_logprobs(self, scheduled: list[ScheduledSeq], logits: torch.Tensor) -> None:
        """Logprobs of the prompt tokens this step's chunks predict. logits: [P, V], in the
        runner's `prompt_rows` order (position p's row predicts prompt token p + 1)."""
        spans = []
        for item in scheduled:
            seq = item.seq
            if seq.params.prompt_logprobs is None:
                continue
            start = seq.num_computed_tokens
            last = min(start + item.num_new_tokens, seq.num_prompt_tokens - 1)
            if last > start:
                spans.append((self._tracked[seq.seq_id], start, last))
        k = max(max(t.seq.params.prompt_logprobs or 0 for t, _, _ in spans), 1)
        targets = [t.seq.prompt_ids[p + 1] for t, start, last in spans for p in range(start, last)]
        values = prompt_logprob_table(logits, targets, k)
        row = 0
        for tracked, start, last in spans:
            wanted = tracked.seq.params.prompt_logprobs or 0
            assert tracked.prompt_logprobs is not None
            for p in range(start, last):
                token_id, logprob, top = values[row]
                tracked.prompt_logprobs[p + 1] = TokenLogprob(token_id, logprob, top[:wanted])
                row += 1

    def _sampling_batch(self, logits: torch.Tensor, seqs: list[Sequence],
                        pending_ids: torch.Tensor | None = None) -> SamplingBatch:
        # A sequence aborted while its step was in flight samples a row nobody reads.
        generators = [t.generator if (t := self._tracked.get(s.seq_id)) is not None else None for s in seqs]
        batch = build_sampling_batch(seqs, generators, self._generator, self.vocab_size, logits.device, pending_ids)
        batch.token_mask = self.structured.token_mask(seqs, logits.device)
        return batch

    def _postprocess(
        self, scheduled: list[ScheduledSeq], sampling: list[Sequence], result: SampleResult | None
    ) -> list[SequenceOutput]:
        """Append each sampling row's token (its step counted as computed already, see `_advance`).
        This runs for every sequence on every step, holding the interpreter lock the event loop
        needs too: one loop, no per-row method layers."""
        outputs = []
        tracked_by_id = self._tracked
        for row, seq in enumerate(sampling):
            assert result is not None
            tracked = tracked_by_id.get(seq.seq_id)
            if tracked is None or tracked.seq is not seq:  # aborted, or stopped, while its step ran
                continue
            seq.num_pending_tokens = 0
            try:
                output = self._take_token(tracked, result, row)
            except Exception as exc:  # this sequence's own bookkeeping (detokenizer, stop strings)
                log.exception("sequence %d failed taking its token", seq.seq_id)
                output = self._finish(tracked, SequenceStatus.FINISHED_ERROR,
                                      f"the model step failed: {type(exc).__name__}")
            if output is not None:
                outputs.append(output)
        register = self.pool.register_computed
        for item in scheduled:  # after the appends: a block is hashed once its tokens are known
            register(item.seq)
        return outputs

    def _take_token(self, tracked: _Tracked, result: SampleResult, row: int) -> SequenceOutput | None:
        """Append row `row`'s token to its sequence; the event to report now, if any."""
        seq = tracked.seq
        params = seq.params
        if params.max_tokens == 0:  # prompt logprobs only (echo with max_tokens = 0)
            return self._finish(tracked, SequenceStatus.FINISHED_LENGTH)
        token_id = result.token_ids[row]
        seq.output_ids.append(token_id)
        tracked.pending_ids.append(token_id)
        if params.logprobs is not None and result.logprobs is not None:
            tracked.pending_logprobs.append(token_logprob(result, row, params.logprobs))
        status = check_stop(tracked, token_id, self.stop_token_ids)
        if status is not None:
            return self._finish(tracked, status)
        if len(tracked.pending_ids) >= self.stream_interval:
            return emit(tracked, None)
        return None

    def _finish(self, tracked: _Tracked, status: SequenceStatus, error: str | None = None) -> SequenceOutput:
        seq = tracked.seq
        seq.status = status
        self.scheduler.remove(seq)
        del self._tracked[seq.seq_id]
        output = emit(tracked, status.finish_reason)
        output.error = error
        return output


def _restore_generators(states: GeneratorStates) -> None:
    for generator, state in states:
        generator.set_state(state)
