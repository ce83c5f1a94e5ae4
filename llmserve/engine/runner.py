"""The model step: scheduled sequences -> packed inputs -> one forward -> logits of the sampling rows.

All of a step's new tokens are packed into one flat batch of T tokens (prefill chunks and
single-token decodes together); positions come from each sequence's computed length, and
`logits_to_keep` limits the LM head to the last token of each sequence that samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmserve.engine.cuda_graphs import DecodeBatch, DecodeGraphs
from llmserve.engine.hf_attention import META_KWARG, AttentionMetadata
from llmserve.engine.kv_cache import KVCache
from llmserve.engine.scheduler import ScheduledSeq


@dataclass
class StepInputs:
    """Tensors for one forward pass."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    logits_indices: torch.Tensor  # [S] int64, rows of the flat batch whose logits are sampled
    meta: AttentionMetadata


class ModelRunner:
    """Runs a Hugging Face causal LM over the paged cache: decode steps from CUDA graphs, the rest eagerly."""

    def __init__(self, model: torch.nn.Module, kv_cache: KVCache, device: torch.device,
                 max_num_seqs: int = 1, max_model_len: int = 0, use_cuda_graphs: bool = False) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.device = device
        self.block_size = kv_cache.spec.block_size
        self.use_triton = device.type == "cuda" and _triton_available()
        self.graphs: DecodeGraphs | None = None
        if use_cuda_graphs and self.use_triton:
            max_blocks = -(-max_model_len // self.block_size)
            self.graphs = DecodeGraphs(model, kv_cache, max_num_seqs, max_blocks, device)
            self.graphs.capture()

    def execute(self, scheduled: list[ScheduledSeq]) -> torch.Tensor:
        """Logits [S, V] of the sequences that sample this step, in schedule order."""
        if self.graphs is not None and self._is_graphable(scheduled):
            return self.graphs.run(self._decode_batch(scheduled))
        return self.forward(self.prepare(scheduled))

    def _is_graphable(self, scheduled: list[ScheduledSeq]) -> bool:
        assert self.graphs is not None
        is_decode = all(item.num_new_tokens == 1 and item.samples for item in scheduled)
        return is_decode and self.graphs.bucket_for(len(scheduled)) is not None

    def _decode_batch(self, scheduled: list[ScheduledSeq]) -> DecodeBatch:
        bs = self.block_size
        batch = DecodeBatch([], [], [], [], [])
        for item in scheduled:
            seq = item.seq
            pos = seq.num_computed_tokens
            batch.token_ids.append(seq.token_at(pos))
            batch.positions.append(pos)
            batch.slots.append(seq.block_table[pos // bs] * bs + pos % bs)
            batch.context_lens.append(pos + 1)
            batch.block_tables.append(seq.block_table)
        return batch

    def prepare(self, scheduled: list[ScheduledSeq]) -> StepInputs:
        """Pack the step's tokens and cache addresses (built on the host, copied once each)."""
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu_seqlens = [0]
        context_lens: list[int] = []
        logits_indices: list[int] = []
        bs = self.block_size
        for item in scheduled:
            seq = item.seq
            start = seq.num_computed_tokens
            end = start + item.num_new_tokens
            table = seq.block_table
            for pos in range(start, end):
                input_ids.append(seq.token_at(pos))
                slots.append(table[pos // bs] * bs + pos % bs)
            positions.extend(range(start, end))
            cu_seqlens.append(len(input_ids))
            context_lens.append(end)
            if item.samples:
                logits_indices.append(len(input_ids) - 1)
        width = max(len(item.seq.block_table) for item in scheduled)
        tables = [item.seq.block_table + [0] * (width - len(item.seq.block_table)) for item in scheduled]
        meta = AttentionMetadata(
            kv_cache=self.kv_cache,
            slot_mapping=self._tensor(slots, torch.int64),
            cu_seqlens_q=self._tensor(cu_seqlens, torch.int32),
            context_lens=self._tensor(context_lens, torch.int32),
            block_tables=self._tensor(tables, torch.int32),
            max_seqlen_q=max(item.num_new_tokens for item in scheduled),
            use_triton=self.use_triton,
        )
        return StepInputs(
            input_ids=self._tensor(input_ids, torch.int64),
            positions=self._tensor(positions, torch.int64),
            logits_indices=self._tensor(logits_indices, torch.int64),
            meta=meta,
        )

    @torch.inference_mode()
    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Logits of the sampling rows: [S, V]."""
        out = self.model(
            input_ids=inputs.input_ids.unsqueeze(0),
            position_ids=inputs.positions.unsqueeze(0),
            use_cache=False,
            logits_to_keep=inputs.logits_indices,
            **{META_KWARG: inputs.meta},
        )
        return out.logits[0]

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        host = torch.tensor(values, dtype=dtype)
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, non_blocking=True)
        return host.to(self.device)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
