"""Step graphs' packing and padding, checked on the CPU: replaying is swapped for a direct forward
over the same static buffers, which must give the eager step's logits for every step shape."""

from __future__ import annotations

import torch

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_engine
from llmserve.engine.cuda_graphs import StepGraphs, StepLogits, _Captured
from llmserve.engine.request import SamplingParams


class UncapturedGraphs(StepGraphs):
    """Runs the forward a graph would replay, directly."""

    def _replay(self, num_tokens: int, num_seqs: int, max_seqlen_q: int) -> _Captured:
        with torch.inference_mode():
            logits = self._forward(num_tokens, num_seqs, max_seqlen_q)
        return _Captured(graph=None, logits=logits, greedy_ids=logits.argmax(dim=-1))  # type: ignore[arg-type]


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
    while engine.has_work:
        scheduled = engine.scheduler.schedule()
        batch = runner.prepare(scheduled)
        expected = runner.forward(batch)
        assert graphs.fits(len(batch.token_ids), len(scheduled), batch.max_seqlen_q)
        got = graphs.run(batch)
        torch.testing.assert_close(got.logits, expected, rtol=1e-5, atol=1e-5)
        assert got.greedy_ids is not None
        assert got.greedy_ids.tolist() == expected.argmax(dim=-1).tolist()
        shapes.add("decode" if batch.max_seqlen_q == 1 else "mixed")
        sampling = [s.seq for s in scheduled if s.samples]
        engine._postprocess(scheduled, sampling, engine._sample(StepLogits(expected), sampling) if sampling else None)
    assert shapes == {"decode", "mixed"}
