"""Through HTTP on the generic path: 16 concurrent streams on Mamba, a hybrid and the remote-code model,
each token-exact against `generate`; streams the client leaves are aborted and free their state."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from llmserve.app import create_app
from llmserve.config import parse_config
from tests.api.conftest import live_server
from tests.generic.conftest import generate, generic_engine_factory, load_reference

TEXTS = ["alpha beta", "def f(x):\n    return x * 2\n", "The rain in Spain " * 5, "z", "import numpy as np",
         "1 2 3 4 5 6 7 8", "Dear colleague,\nthank you for", "<html><body>", "SELECT name FROM", "0xdeadbeef",
         "class Worker:", "for i in range(10):", "Once upon a time", "# TODO", "return None", "async def main():"]
MAX_TOKENS = [21, 6, 17, 14, 9, 19, 4, 18, 11, 16, 8, 13, 7, 20, 5, 12]


@pytest.mark.parametrize("name", ["mamba", "hybrid", "remote"])
def test_concurrent_streams_are_token_exact_and_left_streams_free_their_state(
        name: str, model_dirs: dict[str, Path]) -> None:
    model_dir = model_dirs[name]
    worker = {"model_path": str(model_dir), "model_names": ["m"], "dtype": "float32", "max_num_seqs": 32,
              "trust_remote_code": name == "remote"}
    config = parse_config({"server": {}, "workers": [worker]})
    app = create_app(config, engine_factory=generic_engine_factory)
    reference = load_reference(model_dir)
    with live_server(config, app=app) as url:
        engine = app.state.server.workers[0].engine
        tokenizer = engine.tokenizer
        prompts = [tokenizer.encode(t) for t in TEXTS]
        expected = [generate(reference, p, n) for p, n in zip(prompts, MAX_TOKENS, strict=True)]

        async def one(client: httpx.AsyncClient, i: int) -> tuple[list[str], str]:
            await asyncio.sleep(0.02 * i)  # staggered: requests join the running batch at different steps
            body = {"model": "m", "prompt": prompts[i], "max_tokens": MAX_TOKENS[i], "temperature": 0, "stream": True,
                    "logprobs": 0}
            pieces: list[str] = []
            text = ""
            async with client.stream("POST", f"{url}/completions", json=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        choice = json.loads(line[6:])["choices"][0]
                        text += choice["text"]
                        pieces += (choice.get("logprobs") or {}).get("tokens") or []
            return pieces, text

        async def leave(client: httpx.AsyncClient) -> None:
            body = {"model": "m", "prompt": "hello", "max_tokens": 2000, "stream": True, "ignore_eos": True}
            async with client.stream("POST", f"{url}/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and '"text":"' in line:
                        break  # the client goes away mid-stream

        async def run_all() -> list[tuple[list[str], str]]:
            async with httpx.AsyncClient(timeout=120) as client:
                results = await asyncio.gather(*(one(client, i) for i in range(len(TEXTS))),
                                               *(leave(client) for _ in range(4)))
            return results[:len(TEXTS)]  # type: ignore[return-value]

        results = asyncio.run(run_all())
        for i, (pieces, text) in enumerate(results):
            assert pieces == [tokenizer.decode([t]) for t in expected[i]], f"request {i}"
            assert text == tokenizer.decode(expected[i], skip_special_tokens=True).rstrip("\ufffd")
        deadline = time.monotonic() + 10
        while engine.has_work or app.state.server.workers[0].num_unfinished:
            assert time.monotonic() < deadline, "left streams still hold the engine"
            time.sleep(0.05)
        assert not engine._groups and not engine._group_of, "every sequence's cache state was freed"
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        aborted = [line for line in metrics.splitlines()
                   if line.startswith("llmserve_sequences_finished_total") and 'finish_reason="abort"' in line]
        assert len(aborted) == 1 and aborted[0].endswith(" 4.0"), "the four streams left were aborted"
