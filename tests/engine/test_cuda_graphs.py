"""Step graphs' packing and padding, checked on the CPU: replaying is swapped for a direct forward
over the same static buffers, which must give the eager step's logits for every step shape."""

from __future__ import annotations

import torch

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_engine
from llmserve.engine.cuda_graphs import StepGraphs, _Captured
from llmserve.engine.request import SamplingParams
from tests.engine.graph_steps import graph_and_eager_steps


class UncapturedGraphs(StepGraphs):
    """Runs the forward a graph would replay, directly."""

    def _replay(self, num_tokens: int, num_seqs: int, max_seqlen_q: int) -> _Captured:
        with torch.inference_mode():
            logits = self._forward(num_tokens, num_seqs, max_seqlen_q)
        return _Captured(graph=None, logits=logits, greedy_ids=logits.argmax(dim=-1))  # type: ignore[arg-type]


class StaticOutputGraphs(UncapturedGraphs):
    """Also writes each shape's outputs into the same tensors every time, as a replayed graph does."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._outputs: dict[tuple[int, int, int], _Captured] = {}

    def _replay(self, num_tokens: int, num_seqs: int, max_seqlen_q: int) -> _Captured:
        fresh = super()._replay(num_tokens, num_seqs, max_seqlen_q)
        kept = self._outputs.setdefault((num_tokens, num_seqs, max_seqlen_q), fresh)
        with torch.inference_mode():
            kept.logits.copy_(fresh.logits)
            kept.greedy_ids.copy_(fresh.greedy_ids)
        return kept


def test_async_steps_read_pending_tokens_from_the_previous_graph_outputs(tiny_model_dir) -> None:
    """Steps queued ahead take their pending tokens from the previous step's (reused) graph outputs,
    mixed steps and decodes alike, and generate what a synchronous eager engine generates."""
    def engine_with(graphs_cls, async_scheduling):
        engine = build_engine(WorkerConfig(model_path=str(tiny_model_dir), dtype="float32", kv_cache_tokens=4096,
                                           max_num_batched_tokens=64, max_num_seqs=8, block_size=8), 0)
        runner = engine.runner
        if graphs_cls is not None:
            runner.graphs = graphs_cls(runner.model, runner.kv_cache, 8, 64, 4096 // 8, torch.device("cpu"))
        engine.async_scheduling = async_scheduling
        return engine

    def run(engine):
        tokens: dict[int, list[int]] = {}
        prompts = [list(range(5, 5 + n)) for n in (3, 17, 40, 9, 2, 30)]
        for step in range(200):
            if step < len(prompts):  # one arrival per step: later prefills share steps with decodes
                engine.add(step, prompts[step], SamplingParams(max_tokens=6 + 3 * step, temperature=0.0))
                tokens[step] = []
            elif not engine.has_work:
                break
            for out in engine.step():
                tokens[out.seq_id] += out.token_ids
        return tokens

    expected = run(engine_with(None, False))
    engine = engine_with(StaticOutputGraphs, True)
    assert run(engine) == expected
    assert engine.pool.num_free_blocks == engine.pool.num_blocks


def test_padded_static_steps_match_eager_steps(tiny_model_dir) -> None:
    engine = build_engine(WorkerConfig(model_path=str(tiny_model_dir), dtype="float32", kv_cache_tokens=4096,
                                       max_num_batched_tokens=64, max_num_seqs=8, block_size=8), 0)
    runner = engine.runner
    graphs = UncapturedGraphs(runner.model, runner.kv_cache, 8, 64, 4096 // 8, torch.device("cpu"))
    assert graphs.batch_buckets == [1, 2, 4, 8] and graphs.token_buckets == [64]
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 40, 9, 2)]
    for i, ids in enumerate(prompts):
        engine.add(i, ids, SamplingParams(max_tokens=6, temperature=0.0))
    shapes = set()
    for batch, got, expected in graph_and_eager_steps(engine, graphs):
        assert graphs.fits(len(batch.token_ids), len(batch.context_lens), batch.max_seqlen_q)
        torch.testing.assert_close(got.logits, expected, rtol=1e-5, atol=1e-5)
        assert got.greedy_ids is not None
        assert got.greedy_ids.tolist() == expected.argmax(dim=-1).tolist()
        shapes.add("decode" if batch.max_seqlen_q == 1 else "mixed")
    assert shapes == {"decode", "mixed"}


def test_block_tables_stay_right_as_they_grow_move_rows_and_are_rebuilt_after_preemption(tiny_model_dir) -> None:
    # A cache of 20 blocks of 8 for 6 sequences of up to 40 + 30 tokens: tables grow block by block,
    # sequences finish at different steps (rows shift) and some are preempted (their tables rebuilt).
    engine = build_engine(WorkerConfig(model_path=str(tiny_model_dir), dtype="float32", kv_cache_tokens=160,
                                       max_model_len=128, max_num_batched_tokens=64, max_num_seqs=8,
                                       block_size=8), 0)
    runner = engine.runner
    graphs = UncapturedGraphs(runner.model, runner.kv_cache, 8, 64, 160 // 8, torch.device("cpu"))
    for i, (length, new) in enumerate([(3, 30), (17, 12), (40, 25), (9, 30), (2, 5), (33, 20)]):
        engine.add(i, list(range(7 + i, 7 + i + length)), SamplingParams(max_tokens=new, temperature=0.0,
                                                                         ignore_eos=True))
    steps = 0
    for _, got, expected in graph_and_eager_steps(engine, graphs):
        torch.testing.assert_close(got.logits, expected, rtol=1e-5, atol=1e-5)
        steps += 1
    assert steps > 30 and engine.scheduler.num_preemptions > 0
