"""Orchestration: build prompts, send them with Poisson arrivals under a concurrency limit."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import httpx
import numpy as np

from llmserve.bench.client import RequestResult, build_payload, send_request
from llmserve.bench.dataset import BenchPrompt, Tokenizer, build_prompts, mean_prompt_tokens
from llmserve.bench.metrics import compute_metrics
from llmserve.bench.options import BenchError, BenchOptions
from llmserve.bench.progress import ProgressBar
from llmserve.bench.report import BenchReport
from llmserve.tls import client_verify


def arrival_offsets_s(num: int, request_rate: float, rng: np.random.Generator) -> list[float]:
    """Send times relative to the start: a Poisson process (exponential gaps), first at 0.

    An infinite rate sends everything at once.
    """
    if math.isinf(request_rate):
        return [0.0] * num
    gaps = rng.exponential(1.0 / request_rate, size=max(num - 1, 0))
    return ([0.0] + [float(t) for t in np.cumsum(gaps)]) if num else []


def make_client(
    options: BenchOptions, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """An HTTP client whose pool fits the concurrency and whose timeout outlasts any request."""
    num_connections = options.max_concurrency or options.num_prompts
    limits = httpx.Limits(max_connections=num_connections, max_keepalive_connections=num_connections)
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    try:
        verify = client_verify(options.ca_cert)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    return httpx.AsyncClient(
        timeout=httpx.Timeout(options.request_timeout_s),
        limits=limits,
        headers=headers,
        transport=transport,
        verify=verify,
    )


async def resolve_model(client: httpx.AsyncClient, options: BenchOptions) -> str:
    """`options.model`, or the first model that `GET {base_url}/models` lists."""
    if options.model:
        return options.model
    url = options.base_url.rstrip("/") + "/models"
    try:
        response = await client.get(url)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, LookupError, TypeError) as exc:
        raise BenchError(f"no --model given and GET {url} listed none: {type(exc).__name__}: {exc}") from exc


async def _send_one(
    client: httpx.AsyncClient,
    options: BenchOptions,
    model: str,
    prompt: BenchPrompt,
    semaphore: asyncio.Semaphore | None,
) -> RequestResult:
    """Send one prompt, waiting for a concurrency slot first when there is a limit."""
    payload = build_payload(options.endpoint, model, prompt, options.temperature, options.logprobs,
                            options.ignore_eos, options.json_schema)
    if semaphore is None:
        return await send_request(client, options.url, payload, prompt.num_prompt_tokens)
    async with semaphore:
        return await send_request(client, options.url, payload, prompt.num_prompt_tokens)


async def send_all(
    client: httpx.AsyncClient,
    options: BenchOptions,
    model: str,
    prompts: Sequence[BenchPrompt],
    progress: ProgressBar,
) -> list[RequestResult]:
    """Launch every prompt at its arrival time; results come back in prompt order."""
    semaphore = asyncio.Semaphore(options.max_concurrency) if options.max_concurrency else None
    rng = np.random.default_rng([options.seed, 1])  # independent of the prompts' stream
    offsets = arrival_offsets_s(len(prompts), options.request_rate, rng)
    tasks: list[asyncio.Task[RequestResult]] = []
    start_s = time.perf_counter()
    try:
        for prompt, offset_s in zip(prompts, offsets, strict=True):
            delay_s = start_s + offset_s - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            task = asyncio.create_task(_send_one(client, options, model, prompt, semaphore))
            task.add_done_callback(lambda _: progress.update())
            tasks.append(task)
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def run_bench_async(
    options: BenchOptions,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    tokenizer: Tokenizer | None = None,
) -> BenchReport:
    """Run the benchmark described by `options` and measure it.

    `transport` replaces the network (tests pass an ASGI app); `tokenizer` replaces loading
    `options.tokenizer` from disk.
    """
    prompts = build_prompts(options, tokenizer)
    is_approx = tokenizer is None and options.tokenizer is None
    started_at_unix_s = time.time()
    async with make_client(options, transport) as client:
        model = await resolve_model(client, options)
        progress = ProgressBar(len(prompts), ProgressBar.should_show(options.show_progress))
        start_s = time.perf_counter()
        try:
            results = await send_all(client, options, model, prompts, progress)
        finally:
            progress.close()
        duration_s = time.perf_counter() - start_s
    return BenchReport(
        options=options,
        model=model,
        metrics=compute_metrics(results, duration_s),
        is_prompt_len_approx=is_approx,
        mean_prompt_tokens_built=mean_prompt_tokens(prompts),
        started_at_unix_s=started_at_unix_s,
        results=results,
    )


def run_bench(options: BenchOptions) -> BenchReport:
    """Synchronous entry point: run the benchmark in a fresh event loop."""
    return asyncio.run(run_bench_async(options))
