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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from llmserve.engine.cuda_graphs import StepLogits
from llmserve.engine.detokenizer import IncrementalDetokenizer
from llmserve.engine.kv_cache import BlockPool
from llmserve.engine.outputs import SequenceOutput, check_stop, emit, token_logprob
from llmserve.engine.outputs import TrackedSequence as _Tracked
from llmserve.engine.request import SamplingParams, Sequence, SequenceStatus, TokenLogprob
from llmserve.engine.runner import ModelRunner, Readback
from llmserve.engine.sampler import (
    DeviceSample,
    SampleResult,
    SamplingBatch,
    build_sampling_batch,
    is_plain_greedy,
    make_generator,
    prompt_logprob_table,
    read_sample,
    sample,
    sample_on_device,
)
from llmserve.engine.scheduler import ScheduledSeq, Scheduler
from llmserve.engine.transfer import to_device
from llmserve.structured.decoding import StructuredDecoding


@dataclass
class _Launched:
    """A step queued on the device, its sampled tokens not read yet."""

    scheduled: list[ScheduledSeq]
    sampling: list[Sequence]  # the rows that sample, in row order
    step: StepLogits
    drawn: DeviceSample | None  # the tokens drawn on the device (with logprobs, if asked); None: host samples
    readback: Readback | None  # what the host reads of them, on its way

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
        self.stop_token_ids = stop_token_ids
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.stream_interval = stream_interval
        self.async_scheduling = async_scheduling
        self._tracked: dict[int, _Tracked] = {}
        self._in_flight: _Launched | None = None  # the step scheduled ahead, not read back yet
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
        return bool(self._tracked) or self._in_flight is not None

    def add(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        """Queue a new sequence; it joins the running batch at a step boundary."""
        seq = Sequence(seq_id, list(prompt_ids), params)
        detok = IncrementalDetokenizer(self.tokenizer, seq.prompt_ids, params.stop)
        tracked = _Tracked(seq, detok, make_generator(params, self.runner.device))
        if params.prompt_logprobs is not None:
            tracked.prompt_logprobs = [None] * len(seq.prompt_ids)
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
        the next one is queued before this one's tokens are read.
        """
        launched, self._in_flight = self._in_flight, None
        try:
            if launched is None:
                launched = self._launch(self.scheduler.schedule(), None)
                if launched is None:
                    return []
            if self.async_scheduling and launched.readback is not None:
                self._in_flight = self._launch_ahead(launched)
            return self._complete(launched)
        except BaseException:
            self._in_flight = None
            raise

    def _launch(self, scheduled: list[ScheduledSeq], prev: _Launched | None) -> _Launched | None:
        """Queue a step on the device (prompt logprobs are read at once); None if nothing runs."""
        if not scheduled:
            return None
        ids = [item.seq.seq_id for item in scheduled]
        self.last_scheduled = ids if prev is None else [item.seq.seq_id for item in prev.scheduled] + ids
        sampling = [item.seq for item in scheduled if item.samples]
        rows = None if prev is None else {seq.seq_id: row for row, seq in enumerate(prev.sampling)}
        step = self.runner.execute(scheduled) if prev is None else self.runner.execute(scheduled, prev.token_ids, rows)
        if step.logits.shape[0] > len(sampling):
            self._record_prompt_logprobs(scheduled, step.logits[len(sampling):])
        drawn = self._draw_on_device(step, sampling, prev, rows)
        readback = self.runner.start_readback(drawn.for_host) if drawn is not None else None
        self._advance(scheduled)
        return _Launched(scheduled, sampling, step, drawn, readback)

    def _draw_on_device(self, step: StepLogits, seqs: list[Sequence], prev: _Launched | None,
                        rows: dict[int, int] | None) -> DeviceSample | None:
        """The step's tokens [S] drawn on the device: plain greedy always (its argmax only), every
        step with async scheduling. None where the host samples after reading the logits."""
        if not seqs:
            return None
        if is_plain_greedy([s.params for s in seqs]):
            ids = step.greedy_ids if step.greedy_ids is not None else step.logits[: len(seqs)].argmax(dim=-1)
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
            # A grammar row's next mask needs its token on the host first: it waits for the read-back.
            if (params.grammar is None and seq.num_output_tokens + 1 < params.max_tokens
                    and seq.num_tokens + 1 < self.max_model_len):
                seq.num_pending_tokens = 1
        return self._launch(self.scheduler.schedule(), launched)

    def _advance(self, scheduled: list[ScheduledSeq]) -> None:
        """Count a queued step's tokens as computed: the next step is scheduled after them."""
        for item in scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens

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
        """Append each sampling row's token (its step counted as computed already, see `_advance`)."""
        outputs = []
        for row, seq in enumerate(sampling):
            assert result is not None
            tracked = self._tracked.get(seq.seq_id)
            if tracked is None or tracked.seq is not seq:  # aborted, or stopped, while its step ran
                continue
            seq.num_pending_tokens = 0
            if seq.params.max_tokens == 0:  # prompt logprobs only (echo with max_tokens = 0)
                outputs.append(self._finish(tracked, SequenceStatus.FINISHED_LENGTH))
                continue
            token_id = result.token_ids[row]
            seq.output_ids.append(token_id)
            tracked.pending_ids.append(token_id)
            if seq.params.logprobs is not None and result.logprobs is not None:
                tracked.pending_logprobs.append(self._logprob(result, row, seq.params.logprobs))
            status = self._check_stop(tracked, token_id)
            if status is not None:
                outputs.append(self._finish(tracked, status))
            elif len(tracked.pending_ids) >= self.stream_interval:
                outputs.append(self._emit(tracked, None))
        for item in scheduled:  # after the appends: a block is hashed once its tokens are known
            self.pool.register_computed(item.seq)
        return outputs

    def _logprob(self, result: SampleResult, row: int, k: int) -> TokenLogprob:
        return token_logprob(result, row, k)

    def _check_stop(self, tracked: _Tracked, token_id: int) -> SequenceStatus | None:
        return check_stop(tracked, token_id, self.stop_token_ids)

    def _finish(self, tracked: _Tracked, status: SequenceStatus, error: str | None = None) -> SequenceOutput:
        seq = tracked.seq
        seq.status = status
        self.scheduler.remove(seq)
        del self._tracked[seq.seq_id]
        output = self._emit(tracked, status.finish_reason)
        output.error = error
        return output

    def _emit(self, tracked: _Tracked, finish_reason: str | None) -> SequenceOutput:
        return emit(tracked, finish_reason)
