"""Worker plumbing: request streams merge what queued up, release aborts, the queue is bounded."""

from __future__ import annotations

import asyncio

import pytest

from llmserve.config import WorkerConfig
from llmserve.engine.builder import build_engine
from llmserve.engine.engine import SequenceOutput
from llmserve.engine.request import SamplingParams, TokenLogprob
from llmserve.errors import ServiceUnavailableError
from llmserve.worker import RequestStream, Worker


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
