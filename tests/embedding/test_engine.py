"""EmbeddingEngine: the worker-facing engine that batches queued inputs into one `embed` call per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmserve.config import WorkerConfig
from llmserve.embedding.engine import EmbeddingEngine, EmbeddingOutput, build_embedding_engine
from llmserve.engine.request import SamplingParams


class FakeEmbedder:
    """Embeds an input as [len(ids), first id, 0, ...]; records each call's batch."""

    max_input_tokens = 32
    vocab_size = 100
    num_dimensions = 4

    def __init__(self) -> None:
        self.calls: list[list[list[int]]] = []
        self.error: Exception | None = None

    def embed(self, batch: list[list[int]]) -> torch.Tensor:
        self.calls.append([list(ids) for ids in batch])
        if self.error is not None:
            raise self.error
        return torch.tensor([[len(ids), ids[0], 0, 0] for ids in batch], dtype=torch.float32)


def _engine(**kwargs: int) -> tuple[EmbeddingEngine, FakeEmbedder]:
    embedder = FakeEmbedder()
    return EmbeddingEngine(embedder, tokenizer=None, **kwargs), embedder  # type: ignore[arg-type]


def test_one_step_embeds_every_queued_input_together() -> None:
    engine, embedder = _engine()
    for seq_id, ids in enumerate([[1, 2, 3], [4], [5, 6]]):
        engine.add(seq_id, ids, SamplingParams())
    assert engine.has_work
    outputs = engine.step()
    assert len(embedder.calls) == 1 and engine.num_steps == 1 and not engine.has_work
    assert [o.seq_id for o in outputs] == [0, 1, 2]
    assert all(isinstance(o, EmbeddingOutput) and o.finish_reason == "stop" and o.error is None for o in outputs)
    assert [o.num_prompt_tokens for o in outputs] == [3, 1, 2]
    assert [o.embedding.tolist() for o in outputs if isinstance(o, EmbeddingOutput) and o.embedding is not None] \
        == [[3, 1, 0, 0], [1, 4, 0, 0], [2, 5, 0, 0]]
    assert engine.step() == []


def test_token_budget_and_sequence_limit_cut_steps_in_arrival_order() -> None:
    engine, embedder = _engine(max_num_seqs=3, max_num_batched_tokens=16)
    lengths = [10, 6, 1, 1, 1, 1, 20]
    for seq_id, n in enumerate(lengths):
        engine.add(seq_id, [seq_id] * n)
    steps = []
    while engine.has_work:
        steps.append([o.seq_id for o in engine.step()])
    # 10 + 6 fills the budget; then three short ones (sequence limit); an input over the budget runs alone.
    assert steps == [[0, 1], [2, 3, 4], [5], [6]]
    assert [len(call) for call in embedder.calls] == [2, 3, 1, 1]


def test_abort_drops_a_queued_input() -> None:
    engine, embedder = _engine()
    engine.add(7, [1, 2])
    engine.add(8, [3])
    aborted = engine.abort(7)
    assert aborted is not None and aborted.finish_reason == "abort" and aborted.embedding is None
    assert engine.abort(7) is None and engine.abort(99) is None
    assert [o.seq_id for o in engine.step()] == [8]
    assert embedder.calls == [[[3]]]


def test_a_failed_step_fails_its_inputs_and_keeps_the_rest() -> None:
    engine, embedder = _engine(max_num_seqs=2)
    for seq_id in range(3):
        engine.add(seq_id, [seq_id + 1])
    embedder.error = RuntimeError("boom")
    with pytest.raises(RuntimeError):
        engine.step()
    assert engine.last_scheduled == [0, 1]
    failed = engine.fail(engine.last_scheduled, "the model step failed: RuntimeError")
    assert [(o.seq_id, o.finish_reason, o.error) for o in failed] == [
        (0, "error", "the model step failed: RuntimeError"), (1, "error", "the model step failed: RuntimeError")]
    embedder.error = None
    assert [o.seq_id for o in engine.step()] == [2]
    assert not engine.has_work


def test_built_from_worker_config(minilm_dir: Path) -> None:
    config = WorkerConfig(model_path=str(minilm_dir), max_model_len=128, max_num_seqs=8)
    engine = build_embedding_engine(config, 0)
    assert engine.task == "embed"
    assert (engine.max_model_len, engine.num_dimensions, engine.vocab_size) == (128, 384, 30522)
    ids = engine.tokenizer("hello world")["input_ids"]
    engine.add(0, ids)
    (output,) = engine.step()
    assert isinstance(output, EmbeddingOutput) and output.embedding is not None
    assert output.embedding.dtype == np.float32 and output.embedding.shape == (384,)
    assert abs(float(np.linalg.norm(output.embedding)) - 1.0) < 1e-5  # MiniLM normalises
