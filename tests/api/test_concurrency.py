"""Through HTTP: concurrent greedy requests are token-exact; disconnects abort; several workers share load."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmserve.app import create_app
from llmserve.engine.builder import build_worker_engine
from tests.api.conftest import live_server, tiny_config

PROMPTS = ["alpha beta", "def f(x):\n    return x * 2\n", "The rain in Spain " * 8, "z", "import numpy as np",
           "1 2 3 4 5 6 7 8", "Dear colleague,\nthank you for", "<html><body>", "SELECT name FROM", "0xdeadbeef"]
MAX_TOKENS = [21, 6, 33, 14, 9, 27, 4, 18, 11, 25]


def test_concurrent_greedy_requests_match_generate(tiny_model_dir, base_url: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    expected = []
    with torch.inference_mode():
        for ids, n in zip(prompt_ids, MAX_TOKENS, strict=True):
            out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):].tolist()
            expected.append(out)

    async def one(client: httpx.AsyncClient, i: int) -> dict:
        await asyncio.sleep(0.01 * i)  # staggered: requests join the running batch at different steps
        r = await client.post(f"{base_url}/completions", json={
            "model": "tiny-llama", "prompt": prompt_ids[i], "max_tokens": MAX_TOKENS[i], "temperature": 0,
            "logprobs": 0})
        assert r.status_code == 200, r.text
        return r.json()

    async def run_all() -> list[dict]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(one(client, i) for i in range(len(PROMPTS))))

    results = asyncio.run(run_all())
    for i, body in enumerate(results):
        tokens = body["choices"][0]["logprobs"]["tokens"]
        assert body["usage"]["completion_tokens"] == len(expected[i]) == len(tokens)
        assert tokens == [tokenizer.decode([t]) for t in expected[i]], f"request {i}"
        assert body["choices"][0]["text"] == tokenizer.decode(expected[i], skip_special_tokens=True)


def _async_engine(config, index: int):
    """The worker's engine with async scheduling on, as on CUDA (the builder enables it there only)."""
    engine = build_worker_engine(config, index)
    engine.async_scheduling = True
    return engine


def test_async_scheduling_over_http_streams_exact_text_and_frees_aborted_streams(tiny_model_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    with torch.inference_mode():
        expected = [tokenizer.decode(model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):],
                                     skip_special_tokens=True)
                    for ids, n in zip(prompt_ids, MAX_TOKENS, strict=True)]
    config = tiny_config(tiny_model_dir)
    app = create_app(config, engine_factory=_async_engine)
    with live_server(config, app=app) as url:
        async def one(client: httpx.AsyncClient, i: int) -> str:
            await asyncio.sleep(0.01 * i)
            body = {"model": "tiny-llama", "prompt": prompt_ids[i], "max_tokens": MAX_TOKENS[i], "temperature": 0,
                    "stream": True}
            text = ""
            async with client.stream("POST", f"{url}/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        text += json.loads(line[6:])["choices"][0]["text"]
            return text

        async def drop(client: httpx.AsyncClient) -> None:
            body = {"model": "tiny-llama", "prompt": "hello", "max_tokens": 2000, "stream": True, "ignore_eos": True}
            async with client.stream("POST", f"{url}/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and '"text":"' in line:
                        break

        async def run_all() -> list[str]:
            async with httpx.AsyncClient(timeout=60) as client:
                results = await asyncio.gather(*(one(client, i) for i in range(len(PROMPTS))),
                                               *(drop(client) for _ in range(4)))
            return results[:len(PROMPTS)]

        assert asyncio.run(run_all()) == expected
        deadline = time.monotonic() + 3
        while _running_from_ready(httpx.get(url.removesuffix("/v1") + "/ready").json()):
            assert time.monotonic() < deadline, "aborted requests still hold the worker"
            time.sleep(0.05)
        worker = app.state.server.workers[0]
        assert worker.engine.async_scheduling
        assert worker.engine.pool.num_free_blocks == worker.engine.pool.num_blocks


def _unfinished(app_state) -> int:
    return sum(w.num_unfinished for w in app_state.workers)


def test_disconnects_abort_streams_and_free_the_cache(tiny_model_dir) -> None:
    config = tiny_config(tiny_model_dir)
    with live_server(config) as url:
        async def drop(client: httpx.AsyncClient) -> None:
            body = {"model": "tiny-llama", "prompt": "hello", "max_tokens": 2000, "stream": True,
                    "ignore_eos": True}
            async with client.stream("POST", f"{url}/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and '"text":"' in line:
                        break  # leave mid-stream

        async def burst() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                await asyncio.gather(*(drop(client) for _ in range(8)))

        asyncio.run(burst())
        deadline = time.monotonic() + 3
        while True:
            ready = httpx.get(url.removesuffix("/v1") + "/ready").json()
            if _running_from_ready(ready) == 0:
                break
            assert time.monotonic() < deadline, "aborted requests still hold the worker"
            time.sleep(0.05)
        r = httpx.post(f"{url}/completions", json={"model": "tiny-llama", "prompt": "after", "max_tokens": 3},
                       timeout=30)
        assert r.status_code == 200


def _running_from_ready(ready: dict) -> int:
    return sum(w.get("num_unfinished", 0) for w in ready["workers"])


@pytest.mark.parametrize("dispatch", ["shortest_queue", "lottery"])
def test_two_workers_for_one_name_both_take_traffic(tiny_model_dir, dispatch: str) -> None:
    config = tiny_config(tiny_model_dir, workers=2, dispatch=dispatch)
    with live_server(config) as url:
        async def run() -> None:
            async with httpx.AsyncClient(timeout=60) as client:
                await asyncio.gather(*(client.post(f"{url}/completions", json={
                    "model": "tiny-llama", "prompt": "hi", "max_tokens": 40, "ignore_eos": True})
                    for _ in range(12)))

        asyncio.run(run())
        ready = httpx.get(url.removesuffix("/v1") + "/ready").json()
        served = [w["num_finished"] for w in ready["workers"]]
        assert len(served) == 2 and all(n > 0 for n in served) and sum(served) == 12
