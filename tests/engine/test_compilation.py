"""The compiled step forward on the CPU: the eager step's logits for every shape the CUDA graphs capture,
from two compiles (token counts T >= 2, and T = 1), and an eager fallback when compiling fails.

As in `test_cuda_graphs.py`, replaying a graph is swapped for a direct call of the forward it would
capture, over the same static buffers. `aot_eager` checks the tracing (graph breaks, recompiles)
quickly; one test runs inductor's C++ kernels for the numerics of real fusion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_engine
from llmserve.engine.compilation import CompiledForward, compile_model_forward
from llmserve.engine.cuda_graphs import StepBatch, StepGraphs, _Captured
from llmserve.engine.engine import LLMEngine
from llmserve.engine.request import SamplingParams
from llmserve.engine.runner import ModelRunner
from tests.engine.graph_steps import graph_and_eager_steps

BLOCK_SIZE = 8
BLOCKS_PER_SEQ = 8
CPU = torch.device("cpu")


class DirectGraphs(StepGraphs):
    """Runs the forward a graph would capture, directly."""

    def _replay(self, num_tokens: int, num_seqs: int, max_seqlen_q: int) -> _Captured:
        with torch.inference_mode():
            logits = self._forward(num_tokens, num_seqs, max_seqlen_q)
        return _Captured(graph=None, logits=logits, greedy_ids=logits.argmax(dim=-1))  # type: ignore[arg-type]

    def warm_up(self, forward: Callable[..., Any]) -> None:
        """Call `forward` once per graph shape on padding inputs, as `capture()` does before capturing."""
        self._inputs[2 * self.layout.max_tokens:3 * self.layout.max_tokens].fill_(-1)
        shapes = [(t, self.max_num_seqs, t) for t in self.token_buckets] + [(b, b, 1) for b in self.batch_buckets]
        saved, self.forward_fn = self.forward_fn, forward
        try:
            with torch.inference_mode():
                for shape in shapes:
                    self._forward(*shape)
        finally:
            self.forward_fn = saved


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Compiled code is cached on the model class's code objects: start and leave each test clean."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _engine(model_dir: object) -> LLMEngine:
    return build_engine(WorkerConfig(model_path=str(model_dir), dtype="float32", kv_cache_tokens=4096,
                                     max_num_batched_tokens=64, max_num_seqs=8, block_size=BLOCK_SIZE), 0)


def _graphs(engine: LLMEngine, forward: Callable[..., Any]) -> DirectGraphs:
    runner = engine.runner
    graphs = DirectGraphs(runner.model, runner.kv_cache, 8, 64, 4096 // BLOCK_SIZE, CPU, forward=forward)
    assert graphs.batch_buckets == [1, 2, 4, 8] and graphs.token_buckets == [64]
    return graphs


def _batch(chunks: list[tuple[int, int]]) -> StepBatch:
    """A step of sequences given as (cached tokens, new tokens), each in blocks of its own; the last
    token of each samples."""
    batch = StepBatch([], [], [], [0], [], [], [], max(new for _, new in chunks))
    for seq, (cached, new) in enumerate(chunks):
        table = list(range(seq * BLOCKS_PER_SEQ, (seq + 1) * BLOCKS_PER_SEQ))
        positions = range(cached, cached + new)
        batch.token_ids.extend(7 + 13 * seq + pos for pos in positions)
        batch.positions.extend(positions)
        batch.slots.extend(table[pos // BLOCK_SIZE] * BLOCK_SIZE + pos % BLOCK_SIZE for pos in positions)
        batch.cu_seqlens.append(len(batch.token_ids))
        batch.context_lens.append(cached + new)
        batch.block_tables.append(table)
        batch.logits_indices.append(len(batch.token_ids) - 1)
    return batch


# Steps of T = 64 (mixed: 40 + 17 + 1 tokens, padded), then decodes of 8, 4, 2 and 1 sequences.
STEPS = [[(0, 40), (6, 17), (9, 1)], [(5 + i, 1) for i in range(7)], [(3, 1)] * 3, [(20, 1), (4, 1)], [(11, 1)]]


def _assert_steps_match_eager(engine: LLMEngine, graphs: StepGraphs, steps: list[list[tuple[int, int]]]) -> None:
    for chunks in steps:
        batch = _batch(chunks)
        got = graphs.run(batch)
        expected = engine.runner.forward(batch)
        torch.testing.assert_close(got.logits, expected, rtol=1e-4, atol=1e-4)


def test_two_compiles_serve_every_graph_shape(tiny_model_dir) -> None:
    """aot_eager: warming up T = 64 (mixed) and 8, 4, 2, 1 (decode) compiles one graph for T >= 2 and
    one for T = 1 (torch specialises size 1); the calls after it (the captures) compile nothing."""
    engine = _engine(tiny_model_dir)
    counter = CompileCounterWithBackend("aot_eager")
    forward = CompiledForward(engine.runner.model, counter)
    graphs = _graphs(engine, forward)
    graphs.warm_up(forward.warm_up)
    assert forward.is_compiled and counter.frame_count == 2
    _assert_steps_match_eager(engine, graphs, STEPS)
    assert counter.frame_count == 2


def test_int64_inputs_compile_once_for_every_token_count(tiny_model_dir) -> None:
    """int64 ids and positions (the eager runner's, unpadded): one compile serves the mixed step of T = 58
    and one the decode steps of T = 7 and 3 (which bring the decode gather of the torch path). Beside
    the graphs' int32 inputs that would be more graphs: a dtype is never dynamic."""
    engine = _engine(tiny_model_dir)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = ModelRunner(compile_model_forward(engine.runner.model, counter), engine.runner.kv_cache,  # type: ignore[arg-type]
                           CPU, use_triton=False)
    for chunks in STEPS[:3]:
        batch = _batch(chunks)
        torch.testing.assert_close(compiled.forward(batch), engine.runner.forward(batch), rtol=1e-4, atol=1e-4)
    assert counter.frame_count == 2


def test_inductor_steps_match_eager_steps(tiny_model_dir) -> None:
    """Inductor's fused C++ kernels: every step of five requests served to the end, decode and mixed,
    within 1e-4 of the eager step in float32."""
    engine = _engine(tiny_model_dir)
    counter = CompileCounterWithBackend("inductor")
    graphs = _graphs(engine, compile_model_forward(engine.runner.model, counter))
    for i, ids in enumerate(list(range(5, 5 + n)) for n in (3, 17, 40, 9, 2)):
        engine.add(i, ids, SamplingParams(max_tokens=6, temperature=0.0))
    kinds = set()
    for batch, got, expected in graph_and_eager_steps(engine, graphs):
        torch.testing.assert_close(got.logits, expected, rtol=1e-4, atol=1e-4)
        kinds.add("decode" if batch.max_seqlen_q == 1 else "mixed")
    assert kinds == {"decode", "mixed"}
    assert counter.frame_count <= 2


def test_failed_compile_falls_back_to_eager(tiny_model_dir, caplog: pytest.LogCaptureFixture) -> None:
    def broken_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
        raise RuntimeError("no compiler here")

    engine = _engine(tiny_model_dir)
    forward = CompiledForward(engine.runner.model, broken_backend)
    graphs = _graphs(engine, forward)
    with caplog.at_level(logging.WARNING, logger="llmserve.engine.compilation"):
        graphs.warm_up(forward.warm_up)
    assert not forward.is_compiled
    assert "torch.compile of LlamaForCausalLM failed; running it eagerly" in caplog.text
    _assert_steps_match_eager(engine, graphs, STEPS[:2])


# The CPU's compiled eager step (`cpu_compile`): every step goes through the compiled forward.

def _cpu_engine(model_dir: object, cpu_compile: bool) -> LLMEngine:
    return build_engine(WorkerConfig(model_path=str(model_dir), dtype="float32", kv_cache_tokens=4096,
                                     max_num_batched_tokens=64, max_num_seqs=8, block_size=BLOCK_SIZE,
                                     cpu_compile=cpu_compile), 0)


def _greedy(engine: LLMEngine, prompts: list[list[int]]) -> dict[int, list[tuple[int, float]]]:
    """Each prompt's greedy tokens with their logprobs, all requests served together to the end."""
    for i, ids in enumerate(prompts):
        engine.add(i, ids, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=0))
    got: dict[int, list[tuple[int, float]]] = {i: [] for i in range(len(prompts))}
    while engine.has_work:
        for out in engine.step():
            got[out.seq_id].extend((entry.token_id, entry.logprob) for entry in out.logprobs or [])
    return got


def test_cpu_compile_serves_every_shape_from_the_graphs_compiled_at_start_up(tiny_model_dir) -> None:
    """Inductor on the CPU eager path: the start-up probe compiles every graph the steps need (sizes of
    1 are not specialised; at most three graphs), then prefills of one or several prompts, mixed steps and decodes of 1 to 5
    sequences compile nothing more, with the eager engine's tokens and logprobs (float32, 1e-4)."""
    stats = torch._dynamo.utils.counters["stats"]
    graphs_before = stats["unique_graphs"]
    engine = _cpu_engine(tiny_model_dir, cpu_compile=True)
    assert engine.runner._eager_forward.__self__.is_compiled  # type: ignore[attr-defined]
    graphs_at_start = stats["unique_graphs"]
    assert 1 <= graphs_at_start - graphs_before <= 3  # prefill and mixed steps; decodes (with their gather)
    prompts = [list(range(5, 5 + n)) for n in (1, 3, 17, 40, 9)]
    _greedy(engine, [prompts[0]])  # a lone one-token prompt decoding alone, then the batch
    compiled = _greedy(engine, prompts)
    assert stats["unique_graphs"] == graphs_at_start
    expected = _greedy(_cpu_engine(tiny_model_dir, cpu_compile=False), prompts)
    for i in expected:
        assert [t for t, _ in compiled[i]] == [t for t, _ in expected[i]]
        torch.testing.assert_close([lp for _, lp in compiled[i]], [lp for _, lp in expected[i]], rtol=0, atol=1e-4)


def test_cpu_compile_falls_back_to_eager_when_compiling_fails(tiny_model_dir, caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import llmserve.engine.compilation as compilation

    real_compile = torch.compile

    def failing_compile(model: Any, **kwargs: Any) -> Any:
        def broken_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
            raise RuntimeError("no compiler here")
        return real_compile(model, **{**kwargs, "backend": broken_backend, "options": None})

    monkeypatch.setattr(compilation.torch, "compile", failing_compile)
    with caplog.at_level(logging.WARNING, logger="llmserve.engine.compilation"):
        engine = _cpu_engine(tiny_model_dir, cpu_compile=True)
    assert not engine.runner._eager_forward.__self__.is_compiled  # type: ignore[attr-defined]
    assert "torch.compile of LlamaForCausalLM failed; running it eagerly" in caplog.text
    prompts = [list(range(5, 5 + n)) for n in (3, 17)]
    assert _greedy(engine, prompts) == _greedy(_cpu_engine(tiny_model_dir, cpu_compile=False), prompts)
