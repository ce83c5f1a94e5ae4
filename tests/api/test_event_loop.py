"""Nothing heavy on the event loop: another client's stream keeps flowing while a 4 MB prompt is
tokenized. The server runs as `llmserve run` in a process of its own, so the client's own work
(encoding and reading megabytes) cannot pass for a stall of the server."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TEXT = "The quick brown fox jumps over the lazy dog. " * 90_000  # 4.05 MB, 1.8M tokens


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = tmp_path_factory.mktemp("loop") / "config.toml"
    config.write_text(f'[server]\nport = {port}\nmax_request_bytes = 8000000\ndrain_grace = 0\n[[workers]]\n'
                      f'model_path = "{tiny_model_dir}"\nmodel_names = ["tiny"]\nkv_cache_tokens = 16384\n'
                      "[ui]\nenabled = false\n")
    proc = subprocess.Popen([sys.executable, "-m", "llmserve", "run", str(config), "--log-level", "warning"],
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _tokenize(address: tuple[str, int], body: bytes, times: dict[str, float], result: dict) -> None:
    """POST /v1/tokenize over a raw socket (blocking calls release the GIL: no client-side stall)."""
    head = (f"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(address) as sock:
        times["sent"] = time.perf_counter()
        sock.sendall(head + body)
        chunks = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    times["answered"] = time.perf_counter()
    result["response"] = b"".join(chunks)


def _stream_arrivals(address: tuple[str, int], until: threading.Event) -> list[float]:
    """Arrival times of a streamed completion's SSE events, read until `until` is set."""
    body = json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 4000, "ignore_eos": True,
                       "stream": True}).encode()
    arrivals: list[float] = []
    with socket.create_connection(address) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        while not until.is_set():
            chunk = sock.recv(65536)
            if not chunk:
                break
            arrivals.extend([time.perf_counter()] * chunk.count(b"data: "))
    return arrivals


def _longest_gap_s(arrivals: list[float]) -> float:
    return max(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))


@pytest.mark.xfail(strict=False, reason=(
    "machine-dependent: 10 of 10 isolated runs on the 2-core box passed (longest gaps 36-51 ms), but in one "
    "of three full-suite runs a single 146 ms gap among gaps of at most 25 ms came up; what is left on the "
    "server's side is building the 1.8M-int id list under the GIL (~30 ms)"))
def test_streams_keep_flowing_while_a_4_mb_prompt_is_tokenized(server: tuple[str, int]) -> None:
    """The Rust tokenizer runs without the GIL; what holds it is building the 1.8M-id list from the
    encoding (one call, ~30 ms), then the answer's JSON and the list's freeing, a slice at a time."""
    # The claim is about the server, not the machine: where streaming alone already stalls (a CPU
    # shared with other jobs), a 100 ms bound says nothing either way, and the test says so.
    quiet = threading.Event()
    threading.Timer(3.0, quiet.set).start()
    baseline_s = _longest_gap_s(_stream_arrivals(server, quiet)[5:])
    if baseline_s > 0.05:
        pytest.skip(f"this machine stalls a stream by {baseline_s * 1000:.0f} ms with nothing else running")
    payload = json.dumps({"model": "tiny", "prompt": TEXT}).encode()
    times: dict[str, float] = {}
    result: dict = {}
    done = threading.Event()

    def tokenize_after_a_while() -> None:
        time.sleep(0.5)  # the stream is under way
        _tokenize(server, payload, times, result)
        done.set()

    worker = threading.Thread(target=tokenize_after_a_while)
    worker.start()
    arrivals = _stream_arrivals(server, done)
    worker.join()
    head, _, body = result["response"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    answer = json.loads(body)
    assert answer["count"] == len(answer["tokens"]) > 1_000_000
    during = [t for t in arrivals if times["sent"] <= t <= times["answered"]]
    assert times["answered"] - times["sent"] > 0.5 and len(during) > 10, (times, len(during))
    gaps = sorted(b - a for a, b in zip(during, during[1:], strict=False))
    print(f"baseline {baseline_s * 1000:.0f} ms; {len(during)} chunks while tokenizing, longest gaps "
          f"{[round(g * 1000) for g in gaps[-5:]]} ms")  # shown by pytest -rP
    assert gaps[-1] < 0.1, f"longest inter-chunk gaps while tokenizing: {[round(g * 1000) for g in gaps[-5:]]} ms"


def _longest_loop_stall_s(work: Callable[[], object]) -> float:
    """Longest time the event loop waited for the GIL while `work` ran in a worker thread."""

    async def measure() -> float:
        stalls = [0.0]
        finished = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not finished.is_set():
                await asyncio.sleep(0.002)
                now = time.perf_counter()
                stalls.append(now - last - 0.002)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.to_thread(work)
        finished.set()
        await ticker
        return max(stalls)

    return asyncio.run(measure())


def _stall_at_the_servers_switch_interval(work: Callable[[], object]) -> float:
    """`_longest_loop_stall_s(work)` with the interpreter's switch interval `llmserve run` sets."""
    from llmserve.server import GIL_SWITCH_INTERVAL_S

    previous = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        return _longest_loop_stall_s(work)
    finally:
        sys.setswitchinterval(previous)


def test_a_million_token_ids_are_parsed_without_stalling_the_loop() -> None:
    """The C JSON parser and pydantic's Rust validators hold the GIL for 0.3-0.9 s over such a body
    even in a worker thread; json_body and the schemas' Python checks let it go every few ms."""
    from llmserve.api.json_body import parse_body
    from llmserve.api.schemas import CompletionRequest

    raw = json.dumps({"model": "tiny", "prompt": list(range(1000, 1_000_000))}).encode()  # 6.9 MB
    stall_s = _stall_at_the_servers_switch_interval(lambda: parse_body(raw, CompletionRequest, True))
    assert stall_s < 0.1, f"the loop waited {stall_s * 1000:.0f} ms"


def test_a_body_of_100k_objects_is_checked_without_stalling_the_loop() -> None:
    """A token_check body: 100k small objects, so more brackets than the depth limit and the shape
    check runs; a regex stripping its string literals held the GIL for ~180 ms in one call, the
    vectorised check lets it go (measured: 11-19 ms)."""
    from llmserve.api.json_body import parse_body
    from llmserve.api.tokenize import TokenCheckRequest

    raw = json.dumps({"prompts": [{"model": "tiny", "prompt": f"say [{i}] \\\"hi\\\"", "max_tokens": 5}
                                  for i in range(100_000)]}).encode()
    gc.collect()
    stall_s = _stall_at_the_servers_switch_interval(lambda: parse_body(raw, TokenCheckRequest, True))
    assert stall_s < 0.1, f"the loop waited {stall_s * 1000:.0f} ms"


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_detokenizing_1_8_million_ids_does_not_stall_the_loop(tiny_tokenizer: Any) -> None:
    """Range check, decode, JSON and freeing the ids: the longest hold is handing the ids to the Rust
    decoder (one call); the rest goes a slice at a time."""
    from llmserve.api.tokenize import _detokenize

    tokens = [1000 + i % 3000 for i in range(1_800_000)]
    answer: list[bytes] = []
    stall_s = _longest_loop_stall_s(lambda: answer.append(_detokenize(tiny_tokenizer, tokens, 4096)))
    assert stall_s < 0.1, f"the loop waited {stall_s * 1000:.0f} ms"
    assert tokens == [] and json.loads(answer[0])["prompt"].startswith(tiny_tokenizer.decode([1000, 1001]))


def test_token_check_of_100k_items_does_not_stall_the_loop(tiny_tokenizer: Any) -> None:
    """Validating and counting 100k items and writing the answer (the body's JSON parse, in
    api/json_body.py, is measured by its own test above)."""
    from types import SimpleNamespace

    from llmserve.api.tokenize import TokenCheckRequest, _token_check

    data = {"prompts": [{"model": "tiny", "prompt": f"prompt number {i}", "max_tokens": i % 7} for i in range(100_000)]}
    # Building 100k dicts here arms the garbage collector's full pass (over every object of the
    # process: 0.1-0.7 s, whichever thread allocates next); run it now, not inside the measurement.
    gc.collect()
    worker = SimpleNamespace(tokenizer=tiny_tokenizer, max_model_len=8)
    answer: list[bytes] = []
    stall_s = _longest_loop_stall_s(lambda: answer.append(
        _token_check(TokenCheckRequest.model_validate(data).prompts, {"tiny": worker})))  # type: ignore[dict-item]
    assert stall_s < 0.1, f"the loop waited {stall_s * 1000:.0f} ms"
    checked = json.loads(answer[0])["prompts"]
    expected = [len(tiny_tokenizer.encode(f"prompt number {i}")) for i in (0, 99_999)]
    assert len(checked) == 100_000 and [c["tokenCount"] for c in (checked[0], checked[-1])] == expected
    assert checked[0] == {"fits": expected[0] <= 8, "tokenCount": expected[0], "contextLength": 8}
