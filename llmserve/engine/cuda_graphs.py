"""CUDA graphs for whole engine steps: decode steps by batch size, mixed steps by token count.

On a GPU whose host launches kernels slowly, an eager step costs tens of milliseconds whatever its
size (see the shared GPU notes); replaying a captured graph costs one launch. Two families:

- decode graphs, one per bucketed batch size B: B sequences of one new token each;
- mixed graphs, one per bucketed token count T: up to `max_num_seqs` sequences whose new tokens
  (prefill chunks and decodes together) add up to at most T.

Every input lives in one static int32 buffer; a step packs its inputs on the host (numpy, no
torch calls), copies them in with one host-to-device copy, replays the smallest graph that fits, and
reads the greedy tokens (argmax is part of the graph) or the logits of its sampling rows. On a host
where each CUDA call costs 10-80 us, the number of calls per step decides small-batch latency. Padding tokens have slot -1 (nothing stored); padding sequences have no query rows and a
context length of 0, so they cost almost nothing. A step no graph fits runs eagerly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmserve.engine.compilation import CompiledForward
from llmserve.engine.hf_attention import META_KWARG, AttentionMetadata
from llmserve.engine.kv_cache import KVCache

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
TOKEN_BUCKETS = (64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


@dataclass
class StepBatch:
    """One step's inputs on the host, in the flat layout of `AttentionMetadata`."""

    token_ids: list[int]  # [T]
    positions: list[int]  # [T]
    slots: list[int]  # [T]
    cu_seqlens: list[int]  # [B + 1]
    context_lens: list[int]  # [B]
    block_tables: list[list[int]]  # B rows of block ids
    logits_indices: list[int]  # [S] rows whose logits are sampled
    max_seqlen_q: int
    prompt_logits_indices: list[int] = field(default_factory=list)  # [P] rows for prompt logprobs
    prompt_rows: list[tuple[int, int, int]] = field(default_factory=list)  # (item, first position, count)
    # Tokens the host does not know yet: index in token_ids, and the row of the previous step's
    # greedy tokens (on the device) that holds each.
    pending_indices: list[int] = field(default_factory=list)
    pending_rows: list[int] = field(default_factory=list)


@dataclass
class StepLogits:
    """A step's logits on the device: rows [S + P, V], and the greedy token of each of the S
    sampling rows when the step ran as a graph (argmax taken inside it), else None."""

    logits: torch.Tensor
    greedy_ids: torch.Tensor | None = None


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # [rows, V], written by every replay
    greedy_ids: torch.Tensor  # [rows] int64, argmax of each row, written by every replay


@dataclass(frozen=True)
class _Layout:
    """Offsets of every input in the one int32 buffer a step copies to the device."""

    max_tokens: int
    max_seqs: int
    max_blocks: int

    @property
    def seqs(self) -> int:  # cu_seqlens [S + 1], then context lengths [S], then logit rows [S]
        return 3 * self.max_tokens

    @property
    def pending(self) -> int:  # pending token indices [S], then their source rows [S]
        return self.seqs + 3 * self.max_seqs + 1

    @property
    def tables(self) -> int:  # block tables [S, max_blocks], row-major
        return self.pending + 2 * self.max_seqs

    @property
    def size(self) -> int:
        return self.tables + self.max_seqs * self.max_blocks


class StepGraphs:
    """Captured forwards of one model; `run()` replays the one that fits a step.

    All inputs of a step live in one int32 buffer (token ids, positions, slots, then per-sequence
    offsets, lengths and logit rows, then block tables): the host fills its pinned twin with numpy
    and copies it over in a single transfer, so a decode step costs the host one copy, one replay
    and one read of the sampled tokens.
    """

    def __init__(self, model: torch.nn.Module, kv_cache: KVCache, max_num_seqs: int,
                 max_num_batched_tokens: int, max_blocks_per_seq: int, device: torch.device,
                 forward: Callable[..., Any] | None = None) -> None:
        self.model = model
        self.forward_fn = forward or model
        self.kv_cache = kv_cache
        self.use_triton = device.type == "cuda"
        self.max_num_seqs = max_num_seqs
        self.batch_buckets = sorted({b for b in BATCH_BUCKETS if b < max_num_seqs} | {max_num_seqs})
        self.token_buckets = sorted({t for t in TOKEN_BUCKETS if max_num_seqs < t < max_num_batched_tokens}
                                    | {max(max_num_batched_tokens, max_num_seqs)})
        self.layout = _Layout(self.token_buckets[-1], max_num_seqs, max_blocks_per_seq)
        self._inputs = torch.zeros(self.layout.size, dtype=torch.int32, device=device)
        # Two pinned twins in turn: a step is packed while the previous step's copy may still be queued.
        pinned = device.type == "cuda"
        self._host_inputs = [torch.zeros(self.layout.size, dtype=torch.int32, pin_memory=pinned) for _ in range(2)]
        self._copied = [torch.cuda.Event() for _ in range(2)] if pinned else []  # each buffer's last copy
        self._host_turn = 0
        # Per buffer and row: the block-table list last written there and how much of it. Tables
        # only grow in place (a freed sequence gets a new list), so a row that still holds the same
        # list needs only its new blocks: most steps write none instead of every table again.
        self._rows_written: list[list[tuple[list[int] | None, int]]] = [
            [(None, 0)] * max_num_seqs for _ in range(2)]
        self._decode: dict[int, _Captured] = {}
        self._mixed: dict[int, _Captured] = {}

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up and capture every graph, largest first, sharing one memory pool."""
        started = time.perf_counter()
        lay = self.layout
        self._inputs[2 * lay.max_tokens: 3 * lay.max_tokens].fill_(-1)  # captures run on padding: no stores
        pool = None
        # A capture stream of this card: torch's default one is created once per process, on the
        # card current at the first capture, so a second worker on cuda:1 captured onto cuda:0's
        # stream and failed (seen on 2 x H200).
        capture_stream = torch.cuda.Stream(device=self._inputs.device)
        shapes = [("mixed", t) for t in reversed(self.token_buckets)] + \
                 [("decode", b) for b in reversed(self.batch_buckets)]
        for kind, size in shapes:
            num_tokens, num_seqs, max_q = (size, self.max_num_seqs, size) if kind == "mixed" else (size, size, 1)
            self._forward(num_tokens, num_seqs, max_q, warm_up=True)  # compiles outside the capture
            torch.cuda.current_stream().synchronize()  # this stream only: other workers may be capturing
            graph = torch.cuda.CUDAGraph()
            # thread_local: other workers' threads serving (syncs, copies) on their own cards while
            # this one captures must not invalidate the capture, as the default "global" mode lets them.
            with torch.cuda.graph(graph, pool=pool, stream=capture_stream, capture_error_mode="thread_local"):
                logits = self._forward(num_tokens, num_seqs, max_q)
                greedy = logits.argmax(dim=-1)
            pool = graph.pool()
            (self._mixed if kind == "mixed" else self._decode)[size] = _Captured(graph, logits, greedy)
        torch.cuda.current_stream().synchronize()
        compiled = isinstance(self.forward_fn, CompiledForward) and self.forward_fn.is_compiled
        log.info("captured CUDA graphs (%s forward) for decode batches %s and mixed steps of %s tokens in %.1f s",
                 "compiled" if compiled else "eager", self.batch_buckets, self.token_buckets,
                 time.perf_counter() - started)

    def fits(self, num_tokens: int, num_seqs: int, max_seqlen_q: int) -> bool:
        """Whether some graph can run a step of this shape."""
        if num_seqs > self.max_num_seqs:
            return False
        if max_seqlen_q == 1:
            return True
        return num_tokens <= self.token_buckets[-1]

    def run(self, batch: StepBatch, prev_ids: torch.Tensor | None = None) -> StepLogits:
        """Logits [len(batch.logits_indices), V] of one step and their argmax (views of the graph's
        outputs, valid until the next replay). Pending tokens come from `prev_ids` on the device."""
        num_tokens, num_seqs = len(batch.token_ids), len(batch.context_lens)
        assert self.fits(num_tokens, num_seqs, batch.max_seqlen_q)
        if batch.max_seqlen_q == 1:
            bucket = _smallest(self.batch_buckets, num_seqs)
            shape = (bucket, bucket, 1)
        else:
            bucket = _smallest(self.token_buckets, num_tokens)
            shape = (bucket, self.max_num_seqs, bucket)
        self._fill(batch, shape[0], shape[1])
        if batch.pending_indices:
            assert prev_ids is not None
            self._take_pending(batch, prev_ids)
        rows = len(batch.logits_indices)
        captured = self._replay(*shape)
        return StepLogits(captured.logits[:rows], captured.greedy_ids[:rows])

    def _replay(self, num_tokens: int, num_seqs: int, max_seqlen_q: int) -> _Captured:
        captured = self._decode[num_seqs] if max_seqlen_q == 1 else self._mixed[num_tokens]
        captured.graph.replay()
        return captured

    def _take_pending(self, batch: StepBatch, prev_ids: torch.Tensor) -> None:
        """Write the previous step's greedy tokens into this step's token ids, on the device."""
        lay, inputs = self.layout, self._inputs
        count = len(batch.pending_indices)
        if batch.pending_indices[-1] == batch.pending_rows[-1] == count - 1 and \
                batch.pending_indices == batch.pending_rows == list(range(count)):
            inputs[:count].copy_(prev_ids[:count])  # the same sequences decoding again, in order: one copy
            return
        indices = inputs[lay.pending:lay.pending + count].long()
        rows = inputs[lay.pending + lay.max_seqs:lay.pending + lay.max_seqs + count].long()
        inputs.index_copy_(0, indices, prev_ids.index_select(0, rows).to(inputs.dtype))

    def _fill(self, batch: StepBatch, tokens_cap: int, seqs_cap: int) -> None:
        """Pack the step into a pinned buffer (padding up to the graph's shape) and copy it over.

        Buffers alternate, so packing overlaps the previous step's queued copy; the copy out of this
        buffer two steps ago has long completed (waiting for it costs a few microseconds).
        """
        turn = self._host_turn
        self._host_turn ^= 1
        pinned = self._host_inputs[turn]
        if self._copied:
            self._copied[turn].synchronize()
        lay, host = self.layout, pinned.numpy()
        num_tokens, num_seqs, num_rows = len(batch.token_ids), len(batch.context_lens), len(batch.logits_indices)
        t = lay.max_tokens
        host[0:num_tokens] = batch.token_ids
        host[num_tokens:tokens_cap] = 0
        host[t:t + num_tokens] = batch.positions
        host[t + num_tokens:t + tokens_cap] = 0
        host[2 * t:2 * t + num_tokens] = batch.slots
        host[2 * t + num_tokens:2 * t + tokens_cap] = -1
        cu, ctx, rows = lay.seqs, lay.seqs + lay.max_seqs + 1, lay.seqs + 2 * lay.max_seqs + 1
        host[cu:cu + num_seqs + 1] = batch.cu_seqlens
        host[cu + num_seqs + 1:cu + seqs_cap + 1] = num_tokens
        host[ctx:ctx + num_seqs] = batch.context_lens
        host[ctx + num_seqs:ctx + seqs_cap] = 0
        host[rows:rows + num_rows] = batch.logits_indices
        host[rows + num_rows:rows + seqs_cap] = 0
        num_pending = len(batch.pending_indices)
        host[lay.pending:lay.pending + num_pending] = batch.pending_indices
        host[lay.pending + lay.max_seqs:lay.pending + lay.max_seqs + num_pending] = batch.pending_rows
        # Columns past a row's own blocks are never read (its context length bounds the kernel).
        tables = host[lay.tables:].reshape(lay.max_seqs, lay.max_blocks)
        written = self._rows_written[turn]
        for row, table in enumerate(batch.block_tables):
            length = len(table)
            last, done = written[row]
            if last is not table or done > length:
                done = 0
            if done < length:
                tables[row, done:length] = table[done:]
                written[row] = (table, length)
        end = lay.tables + num_seqs * lay.max_blocks
        self._inputs[:end].copy_(pinned[:end], non_blocking=True)
        if self._copied:
            self._copied[turn].record(torch.cuda.current_stream(self._inputs.device))

    def _forward(self, num_tokens: int, num_seqs: int, max_seqlen_q: int, warm_up: bool = False) -> torch.Tensor:
        """The forward of one graph shape over the static buffer; `warm_up` (outside a capture) lets a
        compiled forward compile this shape, or fall back to eager when it cannot."""
        lay, inputs = self.layout, self._inputs
        t, cu = lay.max_tokens, lay.seqs
        tables = inputs[lay.tables:].view(lay.max_seqs, lay.max_blocks)
        meta = AttentionMetadata(
            kv_cache=self.kv_cache,
            slot_mapping=inputs[2 * t:2 * t + num_tokens],
            cu_seqlens_q=inputs[cu:cu + num_seqs + 1],
            context_lens=inputs[cu + lay.max_seqs + 1:cu + lay.max_seqs + 1 + num_seqs],
            block_tables=tables[:num_seqs],
            max_seqlen_q=max_seqlen_q,
            use_triton=self.use_triton,
        )
        rows = cu + 2 * lay.max_seqs + 1
        forward = self.forward_fn
        if warm_up and isinstance(forward, CompiledForward):
            forward = forward.warm_up
        out = forward(
            input_ids=inputs[:num_tokens].unsqueeze(0),
            position_ids=inputs[t:t + num_tokens].unsqueeze(0),
            use_cache=False,
            logits_to_keep=inputs[rows:rows + num_seqs].long(),
            **{META_KWARG: meta},
        )
        return out.logits[0]


def _smallest(buckets: list[int], size: int) -> int:
    return next(b for b in buckets if b >= size)
