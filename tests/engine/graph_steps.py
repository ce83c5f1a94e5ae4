"""Driving an engine's steps through step graphs and eagerly side by side (CPU tests of cuda_graphs.py)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from llmserve.engine.cuda_graphs import StepBatch, StepGraphs, StepLogits
from llmserve.engine.engine import LLMEngine, _Launched


def graph_and_eager_steps(engine: LLMEngine, graphs: StepGraphs) -> Iterator[tuple[StepBatch, StepLogits, torch.Tensor]]:
    """Serve the engine's requests to the end, each step run by `graphs` and by the eager forward;
    yields (batch, graph result, eager logits), then finishes the step from the eager logits."""
    runner = engine.runner
    while engine.has_work:
        scheduled = engine.scheduler.schedule()
        batch = runner.prepare(scheduled)
        expected = runner.forward(batch)
        yield batch, graphs.run(batch), expected
        sampling = [s.seq for s in scheduled if s.samples]
        computed_before = [s.seq.num_computed_tokens for s in scheduled]
        engine._advance(scheduled)
        engine._complete(_Launched(scheduled, sampling, StepLogits(expected), None, None, computed_before, []))
