"""An embedding worker's engine: inputs of concurrent requests, embedded together in batches.

It offers the worker what `LLMEngine` offers (`add`, `step`, `abort`, `fail`, `has_work`,
`last_scheduled`, `tokenizer`, `vocab_size`, `max_model_len`), so a worker runs either. Each
`step()` takes queued inputs in arrival order, up to `max_num_seqs` inputs and
`max_num_batched_tokens` tokens (always at least one input), embeds them in one `Embedder.embed`
call and finishes each with an `EmbeddingOutput` carrying its vector. Inputs arrive already
tokenized and within `max_model_len`: counting and truncation belong to the API layer.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import AutoConfig, AutoTokenizer

from llmserve.config import WorkerConfig
from llmserve.embedding.embedder import Embedder
from llmserve.engine.engine import SequenceOutput
from llmserve.engine.request import SequenceStatus
from llmserve.engine.serving_path import ServingPath
from llmserve.loading import check_weights, resolve_device, resolve_dtype, resolve_model_dir

log = logging.getLogger(__name__)


@dataclass
class EmbeddingOutput(SequenceOutput):
    """A finished embedding input; `embedding` is its float32 vector [D] (None when aborted or failed)."""

    embedding: np.ndarray | None = None


class EmbeddingEngine:
    """Batches queued embedding inputs; synchronous, owned by the worker's thread."""

    task = "embed"

    def __init__(self, embedder: Embedder, tokenizer: Any, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 2048, max_model_len: int = 0) -> None:
        self.embedder = embedder
        self.tokenizer = tokenizer
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        limit = embedder.max_input_tokens
        self.max_model_len = min(max_model_len, limit) if max_model_len else limit
        self.vocab_size = embedder.vocab_size
        self.num_dimensions = embedder.num_dimensions
        self.last_scheduled: list[int] = []  # ids of the latest step, failed together on error
        self.num_steps = 0  # steps that embedded something, for tests and metrics
        self._waiting: OrderedDict[int, list[int]] = OrderedDict()
        self._running: dict[int, list[int]] = {}  # inputs of the step in progress (or that failed)
        self.serving_path: ServingPath | None = None  # which path this is and why: set by the builder

    @property
    def has_work(self) -> bool:
        return bool(self._waiting)

    def add(self, seq_id: int, prompt_ids: list[int], params: Any = None) -> None:
        """Queue one input (its token ids); `params` (sampling) is ignored."""
        self._waiting[seq_id] = list(prompt_ids)

    def abort(self, seq_id: int) -> EmbeddingOutput | None:
        """Drop a queued input; its final event, or None if unknown or already embedded."""
        ids = self._waiting.pop(seq_id, None)
        return None if ids is None else self._output(seq_id, ids, SequenceStatus.FINISHED_ABORTED)

    def fail(self, seq_ids: list[int], message: str) -> list[SequenceOutput]:
        """End inputs with an error (their step failed)."""
        outputs: list[SequenceOutput] = []
        for seq_id in seq_ids:
            ids = self._running.pop(seq_id, None) or self._waiting.pop(seq_id, None)
            if ids is not None:
                outputs.append(self._output(seq_id, ids, SequenceStatus.FINISHED_ERROR, error=message))
        return outputs

    def step(self) -> list[SequenceOutput]:
        """Embed the next batch of queued inputs in one call; one finished output per input."""
        batch = self._schedule()
        if not batch:
            return []
        self.last_scheduled = list(batch)
        self._running = batch
        vectors = self.embedder.embed(list(batch.values())).numpy()  # [N, D] float32
        self._running = {}
        self.num_steps += 1
        return [self._output(seq_id, ids, SequenceStatus.FINISHED_STOPPED, embedding=vectors[row])
                for row, (seq_id, ids) in enumerate(batch.items())]

    def _schedule(self) -> dict[int, list[int]]:
        batch: dict[int, list[int]] = {}
        num_tokens = 0
        while self._waiting and len(batch) < self.max_num_seqs:
            seq_id, ids = next(iter(self._waiting.items()))
            if batch and num_tokens + len(ids) > self.max_num_batched_tokens:
                break
            del self._waiting[seq_id]
            batch[seq_id] = ids
            num_tokens += len(ids)
        return batch

    @staticmethod
    def _output(seq_id: int, ids: list[int], status: SequenceStatus, error: str | None = None,
                embedding: np.ndarray | None = None) -> EmbeddingOutput:
        return EmbeddingOutput(seq_id=seq_id, text="", token_ids=[], logprobs=[], finish_reason=status.finish_reason,
                               num_prompt_tokens=len(ids), num_output_tokens=0, error=error, embedding=embedding)


def build_embedding_engine(config: WorkerConfig, index: int) -> EmbeddingEngine:
    """Load an embedding worker's model on its device and wrap it in an engine."""
    path = f"workers[{index}]"
    device = resolve_device(config.device, f"{path}.device")
    model_dir = resolve_model_dir(config.model_path, config.revision, f"{path}.model_path")
    check_weights(model_dir, config.allow_pickle, f"{path}.model_path")
    trust = config.trust_remote_code
    checkpoint_dtype = getattr(AutoConfig.from_pretrained(model_dir, trust_remote_code=trust), "dtype", None)
    dtype = resolve_dtype(config.dtype, device, checkpoint_dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust)
    pad_token_id = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else None
    embedder = Embedder(model_dir, device=device, dtype=dtype, trust_remote_code=trust,
                        allow_pickle=config.allow_pickle, max_batch_tokens=config.max_num_batched_tokens,
                        pad_token_id=pad_token_id)
    engine = EmbeddingEngine(embedder, tokenizer, max_num_seqs=config.max_num_seqs,
                             max_num_batched_tokens=config.max_num_batched_tokens,
                             max_model_len=config.max_model_len)
    pooling = embedder.pooling
    log.info(
        "%s: %s (embeddings) on %s, %s, %.1fM parameters, %.2f GiB weights, %d dimensions, %s pooling%s, "
        "inputs up to %d tokens (%s)",
        path, config.model_path, device, str(dtype).removeprefix("torch."), embedder.num_parameters / 1e6,
        embedder.weight_bytes / 1024**3, engine.num_dimensions, pooling.mode,
        " + L2 normalisation" if pooling.normalize else "", engine.max_model_len,
        "longer ones truncated" if config.truncate else "longer ones rejected",
    )
    return engine
