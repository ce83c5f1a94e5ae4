"""CUDA graphs for whole engine steps: decode steps by batch size, mixed steps by token count.

On a GPU whose host launches kernels slowly, an eager step costs tens of milliseconds whatever its
size (see the shared GPU notes); replaying a captured graph costs one launch. Two families:

- decode graphs, one per bucketed batch size B: B sequences of one new token each;
- mixed graphs, one per bucketed token count T: up to `max_num_seqs` sequences whose new tokens
  (prefill chunks and decodes together) add up to at most T.

Every input lives in a static buffer; a step packs its inputs on the host, copies them in with two
host-to-device copies, replays the smallest graph that fits, and reads the logits of its sampling
rows. Padding tokens have slot -1 (nothing stored); padding sequences have no query rows and a
context length of 0, so they cost almost nothing. A step no graph fits runs eagerly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

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


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    logits: torch.Tensor  # [rows, V], written by every replay


class StepGraphs:
    """Captured forwards of one model; `run()` replays the one that fits a step."""

    def __init__(self, model: torch.nn.Module, kv_cache: KVCache, max_num_seqs: int,
                 max_num_batched_tokens: int, max_blocks_per_seq: int, device: torch.device) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.use_triton = device.type == "cuda"
        self.max_num_seqs = max_num_seqs
        self.batch_buckets = sorted({b for b in BATCH_BUCKETS if b < max_num_seqs} | {max_num_seqs})
        self.token_buckets = sorted({t for t in TOKEN_BUCKETS if max_num_seqs < t < max_num_batched_tokens}
                                    | {max(max_num_batched_tokens, max_num_seqs)})
        max_tokens = self.token_buckets[-1]
        self._tokens = torch.zeros(3, max_tokens, dtype=torch.int64, device=device)  # ids, positions, slots
        self._seqs = torch.zeros(3, max_num_seqs + 1, dtype=torch.int32, device=device)  # cu, ctx, logit rows
        self._tables = torch.zeros(max_num_seqs, max_blocks_per_seq, dtype=torch.int32, device=device)
        pin = device.type == "cuda"
        self._host_tokens = torch.zeros(3, max_tokens, dtype=torch.int64, pin_memory=pin)
        self._host_seqs = torch.zeros(3, max_num_seqs + 1, dtype=torch.int32, pin_memory=pin)
        self._host_tables = torch.zeros(max_num_seqs, max_blocks_per_seq, dtype=torch.int32, pin_memory=pin)
        self._decode: dict[int, _Captured] = {}
        self._mixed: dict[int, _Captured] = {}

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up and capture every graph, largest first, sharing one memory pool."""
        started = time.perf_counter()
        self._tokens[2].fill_(-1)  # captures run on padding: nothing is written to the cache
        pool = None
        shapes = [("mixed", t) for t in reversed(self.token_buckets)] + \
                 [("decode", b) for b in reversed(self.batch_buckets)]
        for kind, size in shapes:
            num_tokens, num_seqs, max_q = (size, self.max_num_seqs, size) if kind == "mixed" else (size, size, 1)
            self._forward(num_tokens, num_seqs, max_q)  # compiles kernels outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                logits = self._forward(num_tokens, num_seqs, max_q)
            pool = graph.pool()
            (self._mixed if kind == "mixed" else self._decode)[size] = _Captured(graph, logits)
        torch.cuda.synchronize()
        log.info("captured CUDA graphs for decode batches %s and mixed steps of %s tokens in %.1f s",
                 self.batch_buckets, self.token_buckets, time.perf_counter() - started)

    def fits(self, num_tokens: int, num_seqs: int, max_seqlen_q: int) -> bool:
        """Whether some graph can run a step of this shape."""
        if num_seqs > self.max_num_seqs:
            return False
        if max_seqlen_q == 1:
            return True
        return num_tokens <= self.token_buckets[-1]

    def run(self, batch: StepBatch) -> torch.Tensor:
        """Logits [len(batch.logits_indices), V] of one step (a view of the graph's output)."""
        num_tokens, num_seqs = len(batch.token_ids), len(batch.context_lens)
        assert self.fits(num_tokens, num_seqs, batch.max_seqlen_q)
        if batch.max_seqlen_q == 1:
            bucket = _smallest(self.batch_buckets, num_seqs)
            shape = (bucket, bucket, 1)
        else:
            bucket = _smallest(self.token_buckets, num_tokens)
            shape = (bucket, self.max_num_seqs, bucket)
        self._fill(batch, shape[0], shape[1])
        return self._replay(*shape)[: len(batch.logits_indices)]

    def _replay(self, num_tokens: int, num_seqs: int, max_seqlen_q: int) -> torch.Tensor:
        captured = self._decode[num_seqs] if max_seqlen_q == 1 else self._mixed[num_tokens]
        captured.graph.replay()
        return captured.logits

    def _fill(self, batch: StepBatch, tokens_cap: int, seqs_cap: int) -> None:
        num_tokens, num_seqs = len(batch.token_ids), len(batch.context_lens)
        tokens, seqs, tables = self._host_tokens, self._host_seqs, self._host_tables
        tokens[0, :num_tokens] = torch.tensor(batch.token_ids)
        tokens[1, :num_tokens] = torch.tensor(batch.positions)
        tokens[2, :num_tokens] = torch.tensor(batch.slots)
        tokens[:, num_tokens:tokens_cap] = 0
        tokens[2, num_tokens:tokens_cap] = -1
        seqs[0, : num_seqs + 1] = torch.tensor(batch.cu_seqlens, dtype=torch.int32)
        seqs[0, num_seqs + 1: seqs_cap + 1] = num_tokens
        seqs[1, :num_seqs] = torch.tensor(batch.context_lens, dtype=torch.int32)
        seqs[1, num_seqs:seqs_cap] = 0
        num_rows = len(batch.logits_indices)
        seqs[2, :num_rows] = torch.tensor(batch.logits_indices, dtype=torch.int32)
        seqs[2, num_rows:seqs_cap] = 0
        # Columns past a row's own blocks are never read (its context length bounds the kernel).
        width = max(len(t) for t in batch.block_tables)
        tables[:num_seqs, :width] = torch.tensor([t + [0] * (width - len(t)) for t in batch.block_tables],
                                                 dtype=torch.int32)
        self._tokens[:, :tokens_cap].copy_(tokens[:, :tokens_cap], non_blocking=True)
        self._seqs[:, : seqs_cap + 1].copy_(seqs[:, : seqs_cap + 1], non_blocking=True)
        self._tables[:num_seqs, :width].copy_(tables[:num_seqs, :width], non_blocking=True)

    def _forward(self, num_tokens: int, num_seqs: int, max_seqlen_q: int) -> torch.Tensor:
        meta = AttentionMetadata(
            kv_cache=self.kv_cache,
            slot_mapping=self._tokens[2, :num_tokens],
            cu_seqlens_q=self._seqs[0, : num_seqs + 1],
            context_lens=self._seqs[1, :num_seqs],
            block_tables=self._tables[:num_seqs],
            max_seqlen_q=max_seqlen_q,
            use_triton=self.use_triton,
        )
        out = self.model(
            input_ids=self._tokens[0, :num_tokens].unsqueeze(0),
            position_ids=self._tokens[1, :num_tokens].unsqueeze(0),
            use_cache=False,
            logits_to_keep=self._seqs[2, :num_seqs].long(),
            **{META_KWARG: meta},
        )
        return out.logits[0]


def _smallest(buckets: list[int], size: int) -> int:
    return next(b for b in buckets if b >= size)
