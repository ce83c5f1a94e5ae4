"""The model step: scheduled sequences -> packed inputs -> one forward -> logits of the sampling rows.

All of a step's new tokens are packed into one flat batch of T tokens (prefill chunks and
single-token decodes together); positions come from each sequence's computed length, and
`logits_to_keep` limits the LM head to the last token of each sequence that samples. On CUDA
with Triton the step replays a captured graph when one fits (see `cuda_graphs.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from llmserve.engine.attention import decode_gather, is_triton_usable
from llmserve.engine.compilation import CompiledForward
from llmserve.engine.cuda_graphs import StepBatch, StepGraphs, StepLogits
from llmserve.engine.hf_attention import META_KWARG, AttentionMetadata
from llmserve.engine.kv_cache import KVCache
from llmserve.engine.scheduler import ScheduledSeq
from llmserve.engine.transfer import to_device

log = logging.getLogger(__name__)


class Readback:
    """A step's sampled tokens (and their logprobs, if asked) on their way to the host; `wait()`
    blocks until they landed (without holding the GIL) and returns them."""

    def __init__(self, values: torch.Tensor, event: torch.cuda.Event | None) -> None:
        self._values = values
        self._event = event

    def wait(self) -> torch.Tensor:
        if self._event is not None:
            self._event.synchronize()
        return self._values


class ModelRunner:
    """Runs a Hugging Face causal LM over the paged cache."""

    def __init__(self, model: torch.nn.Module, kv_cache: KVCache, device: torch.device,
                 max_num_seqs: int = 1, max_num_batched_tokens: int = 2048, max_model_len: int = 0,
                 use_triton: bool = True, use_cuda_graphs: bool = False, compile_model: bool = False,
                 compile_eager: bool = False) -> None:
        self.model = model
        # The forward of steps that no graph replays: compiled on request (`cpu_compile`), else the model.
        self._eager_forward: Callable[..., Any] = model
        if compile_eager:
            self._eager_forward = CompiledForward(model, skip_module_guards=True).run
        self.kv_cache = kv_cache
        self.device = device
        self.block_size = kv_cache.spec.block_size
        self.use_triton = use_triton and is_triton_usable(device)
        self.graphs: StepGraphs | None = None
        # Pinned landing buffers for read-backs, two of each dtype used in turn (see start_readback).
        self._readback_buffers: dict[torch.dtype, list[torch.Tensor]] = {}
        self._readback_events: list[torch.cuda.Event] = []
        if device.type == "cuda":
            self._readback_buffers[torch.int64] = [torch.empty(max_num_seqs, dtype=torch.int64, pin_memory=True)
                                                   for _ in range(2)]
            self._readback_events = [torch.cuda.Event(), torch.cuda.Event()]
        self._readback_turn = 0
        if use_cuda_graphs and self.use_triton:
            max_blocks = -(-max_model_len // self.block_size)
            forward = CompiledForward(model) if compile_model else None
            graphs = StepGraphs(model, kv_cache, max_num_seqs, max_num_batched_tokens, max_blocks, device,
                                forward=forward)
            try:
                with torch.cuda.device(device):  # capture on this worker's card, whichever is current
                    graphs.capture()
            except RuntimeError as exc:
                # A model whose forward syncs with the host or copies from pageable memory (an MoE's
                # data-dependent expert loop, say) cannot be captured; its steps run eagerly, the
                # same kernels without the replay.
                log.warning("CUDA graphs cannot capture this model's step (%s); steps run eagerly",
                            str(exc).split("\n")[0][:200])
            else:
                self.graphs = graphs

    def execute(self, scheduled: list[ScheduledSeq], prev_ids: torch.Tensor | None = None,
                source_rows: dict[int, int] | None = None) -> StepLogits:
        """Logits [S + P, V]: the S sequences that sample this step (in schedule order), then the P
        prompt positions whose logprobs were asked for (see `StepBatch.prompt_rows`); with the
        greedy token of each sampling row when a graph computed it.

        Queues the work on the device and returns without waiting for it. A sequence whose next
        token is still pending (sampled by the previous step, not read back) takes it from
        `prev_ids` (that step's greedy tokens, on the device) at row `source_rows[seq_id]`.
        """
        batch = self.prepare(scheduled, source_rows)
        graphs = self.graphs
        fits = graphs is not None and graphs.fits(len(batch.token_ids), len(scheduled), batch.max_seqlen_q)
        if graphs is not None and fits and not batch.prompt_rows:
            return graphs.run(batch, prev_ids)
        return StepLogits(self.forward(batch, prev_ids))

    def start_readback(self, values: torch.Tensor) -> Readback:
        """Start copying a step's sampled values (token ids [S], or with logprobs the flat float64
        tensor of `sample_on_device`) to the host, behind the work queued so far."""
        if values.device.type != "cuda":  # a copy all the same: a graph's outputs get overwritten
            return Readback(values.clone(), None)
        # Two buffers in turn: a step's copy lands while the previous step's is still being read.
        turn = self._readback_turn
        self._readback_turn ^= 1
        out = self._landing_buffer(values.dtype, values.numel(), turn)[: values.numel()].view(values.shape)
        out.copy_(values, non_blocking=True)
        event = self._readback_events[turn]
        event.record(torch.cuda.current_stream(values.device))
        return Readback(out, event)

    def _landing_buffer(self, dtype: torch.dtype, numel: int, turn: int) -> torch.Tensor:
        """The pinned buffer of this dtype and turn, (re)allocated when too small; a buffer still
        being read stays alive through its `Readback`."""
        buffers = self._readback_buffers.setdefault(dtype, [torch.empty(0, dtype=dtype)] * 2)
        if buffers[turn].numel() < numel:
            buffers[turn] = torch.empty(max(numel, 2 * buffers[turn].numel()), dtype=dtype, pin_memory=True)
        return buffers[turn]

    def prepare(self, scheduled: list[ScheduledSeq], source_rows: dict[int, int] | None = None) -> StepBatch:
        """Pack the step's tokens and cache addresses on the host (a pending token as a 0 whose
        index and source row go into `pending_indices` / `pending_rows`)."""
        bs = self.block_size
        batch = StepBatch([], [], [], [0], [], [], [], max(item.num_new_tokens for item in scheduled))
        for index, item in enumerate(scheduled):
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_new_tokens
            table = seq.block_table
            if seq.params.prompt_logprobs is not None:
                # Position p predicts prompt token p + 1; the last prompt position predicts output.
                last = min(end, seq.num_prompt_tokens - 1)
                if last > start:
                    first_row = len(batch.token_ids)
                    batch.prompt_logits_indices.extend(range(first_row, first_row + last - start))
                    batch.prompt_rows.append((index, start, last - start))
            if end - start == 1:  # a decode: the common case, kept free of per-token loops
                if start < seq.num_tokens:
                    batch.token_ids.append(seq.token_at(start))
                else:  # sampled by the step still in flight
                    assert source_rows is not None, "a pending token needs the previous step's rows"
                    batch.pending_indices.append(len(batch.token_ids))
                    batch.pending_rows.append(source_rows[seq.seq_id])
                    batch.token_ids.append(0)
                batch.slots.append(table[start // bs] * bs + start % bs)
                batch.positions.append(start)
            else:
                batch.token_ids.extend(seq.token_at(pos) for pos in range(start, end))
                batch.slots.extend(table[pos // bs] * bs + pos % bs for pos in range(start, end))
                batch.positions.extend(range(start, end))
            batch.cu_seqlens.append(len(batch.token_ids))
            batch.context_lens.append(end)
            batch.block_tables.append(table)
            if item.samples:
                batch.logits_indices.append(len(batch.token_ids) - 1)
        return batch

    @torch.inference_mode()
    def forward(self, batch: StepBatch, prev_ids: torch.Tensor | None = None) -> torch.Tensor:
        """An eager forward of one step: logits [S + P, V]."""
        input_ids = self._tensor(batch.token_ids, torch.int64)
        if batch.pending_indices:
            assert prev_ids is not None
            rows = self._tensor(batch.pending_rows, torch.int64)
            input_ids[self._tensor(batch.pending_indices, torch.int64)] = prev_ids.to(input_ids.device)[rows]
        width = max(len(t) for t in batch.block_tables)
        tables = [t + [0] * (width - len(t)) for t in batch.block_tables]
        block_tables = self._tensor(tables, torch.int32)
        decode_slots = decode_mask = None
        if not self.use_triton and batch.max_seqlen_q == 1:  # decodes only: addresses once, not per layer
            decode_slots, decode_mask = decode_gather(batch.context_lens, block_tables, self.block_size)
        meta = AttentionMetadata(
            kv_cache=self.kv_cache,
            slot_mapping=self._tensor(batch.slots, torch.int64),
            cu_seqlens_q=self._tensor(batch.cu_seqlens, torch.int32),
            context_lens=self._tensor(batch.context_lens, torch.int32),
            block_tables=block_tables,
            max_seqlen_q=batch.max_seqlen_q,
            use_triton=self.use_triton,
            decode_slots=decode_slots,
            decode_mask=decode_mask,
        )
        out = self._eager_forward(
            input_ids=input_ids.unsqueeze(0),
            position_ids=self._tensor(batch.positions, torch.int64).unsqueeze(0),
            use_cache=False,
            logits_to_keep=self._tensor(batch.logits_indices + batch.prompt_logits_indices, torch.int64),
            **{META_KWARG: meta},
        )
        return out.logits[0]

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        return to_device(torch.tensor(values, dtype=dtype), self.device)

