"""Worker plumbing: request streams merge what queued up, release aborts, the queue is bounded."""

from __future__ import annotations

import asyncio

import pytest

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_engine
from llmserve.engine.engine import SequenceOutput
from llmserve.engine.request import SamplingParams, TokenLogprob
from llmserve.errors import ServiceUnavailableError
from llmserve.request_stream import RequestStream
from llmserve.worker import Worker


def _out(seq_id: int, text: str, finish: str | None = None, **kw) -> SequenceOutput:
    return SequenceOutput(seq_id, text, [len(text)], [], finish, 3, 1, **kw)


def test_queued_outputs_come_merged_per_choice_in_order() -> None:
    async def run() -> list[tuple[int, str, str | None]]:
        stream = RequestStream([7, 8])
        first = TokenLogprob(1, -0.5, [])
        for out in (_out(7, "a", prompt_logprobs=[None, first]), _out(8, "x"), _out(7, "b"), _out(7, "c", "stop"),
                    _out(8, "y", "length")):
            stream.put(out)
        got = []
        async for index, out in stream:
            got.append((index, out.text, out.finish_reason))
            if index == 0:
                assert out.prompt_logprobs == [None, first] and out.token_ids == [1, 1, 1]
        return got

    assert asyncio.run(run()) == [(0, "abc", "stop"), (1, "xy", "length")]


def test_release_aborts_unfinished_sequences_and_bounds_the_queue(tiny_model_dir) -> None:
    config = WorkerConfig(model_path=str(tiny_model_dir), kv_cache_tokens=4096, max_num_seqs=1, max_waiting=1)

    async def run() -> None:
        worker = Worker(config, 0, build_engine)
        await worker.start()
        long = SamplingParams(max_tokens=3000, temperature=0.0, ignore_eos=True)
        running = worker.submit([([1, 2, 3], long)])
        waiting = worker.submit([([4, 5, 6], long)])
        with pytest.raises(ServiceUnavailableError):
            worker.submit([([7, 8], long)])  # 1 running + 1 waiting is the limit
        worker.release(running)
        worker.release(waiting)
        for _ in range(200):
            if worker.num_unfinished == 0:
                break
            await asyncio.sleep(0.01)
        assert worker.num_unfinished == 0 and worker.kv_cache_usage == 0.0
        finals = [out async for _, out in running] + [out async for _, out in waiting]
        assert finals[-1].finish_reason == "abort"
        await worker.stop()

    asyncio.run(run())


def test_a_refused_sequence_fails_alone_and_the_worker_keeps_serving(tiny_model_dir, monkeypatch) -> None:
    """A value the engine refuses (a seed no generator takes) and an engine whose `add` raises
    both end only their own sequence with an error; the other request finishes, the worker stays up."""
    config = WorkerConfig(model_path=str(tiny_model_dir), kv_cache_tokens=4096)

    async def run() -> None:
        worker = Worker(config, 0, build_engine)
        await worker.start()
        assert worker.engine is not None
        add = worker.engine.add

        def add_raising_for_marked(seq_id, prompt_ids, params):
            if params.stop == ("marked",):
                raise RuntimeError("broken engine add")
            add(seq_id, prompt_ids, params)

        monkeypatch.setattr(worker.engine, "add", add_raising_for_marked)
        greedy = SamplingParams(max_tokens=8, temperature=0.0)
        good = worker.submit([([1, 2, 3], greedy)])
        bad_seed = worker.submit([([1, 2, 3], SamplingParams(max_tokens=8, seed=2**64))])
        raising = worker.submit([([1, 2, 3], SamplingParams(max_tokens=8, stop=("marked",)))])
        finals = [[out async for _, out in stream][-1] for stream in (good, bad_seed, raising)]
        assert finals[0].finish_reason == "length" and finals[0].error is None and finals[0].num_output_tokens == 8
        assert finals[1].finish_reason == "error" and finals[1].error.startswith("invalid request: seed = ")
        assert finals[2].finish_reason == "error" and finals[2].error == "invalid request: RuntimeError"
        assert worker.is_ready and worker.num_unfinished == 0
        await worker.stop()

    asyncio.run(run())


def test_the_ready_line_says_which_path_serves_and_why(tiny_model_dir, caplog: pytest.LogCaptureFixture) -> None:
    config = WorkerConfig(model_path=str(tiny_model_dir), model_names=("tiny",), kv_cache_tokens=4096)

    async def run() -> None:
        worker = Worker(config, 0, build_engine)
        await worker.start()
        assert worker.serving_path is not None and worker.serving_path.name == "fast"
        await worker.stop()

    with caplog.at_level("INFO", logger="llmserve.worker"):
        asyncio.run(run())
    (line,) = [r.getMessage() for r in caplog.records if r.name == "llmserve.worker" and " ready: " in r.getMessage()]
    assert line.startswith("worker-0 ready: serves tiny in ")
    assert " s on the fast path (the attention contract is served; probe passed: max |logprob difference| " in line
