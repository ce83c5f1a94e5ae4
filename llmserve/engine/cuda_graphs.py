"""CUDA graphs for decode steps: one captured forward per bucketed batch size.

On a GPU whose host launches kernels slowly, an eager decode step costs tens of milliseconds
whatever its size (see shared GPU notes); replaying a captured graph costs one launch. Every
input lives in a static buffer; a step copies its packed inputs in (two host-to-device copies),
replays the smallest graph that fits, and reads the logits of its real rows. Padding rows have
slot -1 (nothing stored) and context length 0 (no attention), so they cost almost nothing.
Steps with prefill tokens, or more sequences than the largest bucket, run eagerly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from llmserve.engine.hf_attention import META_KWARG, AttentionMetadata
from llmserve.engine.kv_cache import KVCache

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


@dataclass
class DecodeBatch:
    """A decode step's inputs on the host: one row per sequence."""

    token_ids: list[int]
    positions: list[int]
    slots: list[int]
    context_lens: list[int]
    block_tables: list[list[int]]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # [bucket, V], written by every replay


class DecodeGraphs:
    """Captured decode forwards of one model for batch sizes up to `max_batch`."""

    def __init__(self, model: torch.nn.Module, kv_cache: KVCache, max_batch: int, max_blocks_per_seq: int,
                 device: torch.device) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.device = device
        self.buckets = sorted({b for b in BATCH_BUCKETS if b < max_batch} | {max_batch})
        self.max_blocks_per_seq = max_blocks_per_seq
        n = self.buckets[-1]
        # Rows: token ids, positions, slots, context lengths (int64 on the host, one copy per step).
        self._packed = torch.zeros(4, n, dtype=torch.int64, device=device)
        self._tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self._cu_seqlens = torch.arange(n + 1, dtype=torch.int32, device=device)
        self._rows = torch.arange(n, dtype=torch.int64, device=device)
        self._host_packed = torch.zeros(4, n, dtype=torch.int64).pin_memory()
        self._host_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32).pin_memory()
        self._graphs: dict[int, _Captured] = {}

    def bucket_for(self, batch_size: int) -> int | None:
        """The smallest captured batch size holding `batch_size` rows, or None."""
        for bucket in self.buckets:
            if bucket >= batch_size:
                return bucket
        return None

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up and capture every bucket, largest first, sharing one memory pool."""
        started = time.perf_counter()
        self._reset_padding(self.buckets[-1])
        pool = None
        for bucket in reversed(self.buckets):
            self._forward(bucket)  # compiles kernels and settles allocations outside the capture
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._forward(bucket)
            pool = graph.pool()
            self._graphs[bucket] = _Captured(graph, logits)
        torch.cuda.synchronize(self.device)
        log.info("captured decode CUDA graphs for batch sizes %s in %.1f s", self.buckets,
                 time.perf_counter() - started)

    def run(self, batch: DecodeBatch) -> torch.Tensor:
        """Logits [batch size, V] of one decode step (a view into the graph's output buffer)."""
        size = len(batch.token_ids)
        bucket = self.bucket_for(size)
        assert bucket is not None
        host = self._host_packed
        host[:, :bucket].zero_()
        host[2, size:bucket] = -1
        host[0, :size] = torch.tensor(batch.token_ids)
        host[1, :size] = torch.tensor(batch.positions)
        host[2, :size] = torch.tensor(batch.slots)
        host[3, :size] = torch.tensor(batch.context_lens)
        # Columns past a row's own blocks are never read (its context length bounds the kernel),
        # so stale values there need no clearing.
        width = max(len(t) for t in batch.block_tables)
        tables = self._host_tables
        tables[:size, :width] = torch.tensor([t + [0] * (width - len(t)) for t in batch.block_tables],
                                             dtype=torch.int32)
        self._packed[:, :bucket].copy_(host[:, :bucket], non_blocking=True)
        self._tables[:size, :width].copy_(tables[:size, :width], non_blocking=True)
        captured = self._graphs[bucket]
        captured.graph.replay()
        return captured.logits[:size]

    def _reset_padding(self, bucket: int) -> None:
        self._packed.zero_()
        self._packed[2].fill_(-1)
        self._tables.zero_()

    def _forward(self, bucket: int) -> torch.Tensor:
        meta = AttentionMetadata(
            kv_cache=self.kv_cache,
            slot_mapping=self._packed[2, :bucket],
            cu_seqlens_q=self._cu_seqlens[: bucket + 1],
            context_lens=self._packed[3, :bucket].to(torch.int32),
            block_tables=self._tables[:bucket],
            max_seqlen_q=1,
            use_triton=True,
        )
        out = self.model(
            input_ids=self._packed[0, :bucket].unsqueeze(0),
            position_ids=self._packed[1, :bucket].unsqueeze(0),
            use_cache=False,
            logits_to_keep=self._rows[:bucket],
            **{META_KWARG: meta},
        )
        return out.logits[0]
