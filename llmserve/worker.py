"""A worker: one model on one device, its engine stepping in a thread of its own.

The asyncio side submits and aborts through a thread-safe inbox; the engine thread hands each
step's outputs back to the event loop in one `call_soon_threadsafe`, where they are routed to
the per-request streams. The asyncio side never touches torch.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from llmserve.config import WorkerConfig
from llmserve.engine.engine import LLMEngine, SequenceOutput
from llmserve.engine.request import SamplingParams
from llmserve.engine.serving_path import ServingPath
from llmserve.errors import InvalidRequestError, ServiceUnavailableError, WorkerDeadError
from llmserve.metrics import ServerMetrics
from llmserve.request_stream import RequestStream

log = logging.getLogger(__name__)


class WorkerState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class _Add:
    seq_ids: list[int]
    prompts: list[tuple[list[int], SamplingParams]]


@dataclass(frozen=True)
class _Abort:
    seq_ids: list[int]


class Worker:
    """Owns one engine; `submit()` gives a request's stream of outputs, `release()` ends it."""

    def __init__(self, config: WorkerConfig, index: int, engine_factory: Any,
                 metrics: ServerMetrics | None = None) -> None:
        self.config = config
        self.index = index
        self.name = f"worker-{index}"
        self.state = WorkerState.LOADING
        self.failure: str | None = None
        self.engine: LLMEngine | None = None
        self.max_model_len = 0
        self._engine_factory = engine_factory
        self._series = metrics.for_model(self.model_names[0]) if metrics is not None else None
        self._inbox: queue.SimpleQueue[_Add | _Abort | None] = queue.SimpleQueue()
        self._streams: dict[int, RequestStream] = {}
        self._token_texts: dict[int, str] = {}  # at most one entry per vocabulary id
        self.num_finished = 0  # sequences finished since start, for /ready and metrics
        self._seq_ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.config.served_names

    @property
    def speed(self) -> float:
        return self.config.speed

    @property
    def is_ready(self) -> bool:
        return self.state is WorkerState.READY

    @property
    def num_unfinished(self) -> int:
        """Sequences submitted and not yet finished (running or waiting)."""
        return len(self._streams)

    @property
    def num_waiting(self) -> int:
        return max(0, self.num_unfinished - self.config.max_num_seqs)

    @property
    def num_running(self) -> int:
        return self.num_unfinished - self.num_waiting

    @property
    def vocab_size(self) -> int:
        assert self.engine is not None
        return int(self.engine.vocab_size)

    @property
    def kv_cache_usage(self) -> float:
        """Share of KV-cache blocks held by live sequences (0 before loading)."""
        pool = getattr(self.engine, "pool", None)  # embedding engines keep no KV cache
        return pool.usage if pool is not None else 0.0

    @property
    def kv_pool(self) -> Any:
        """The engine's KV-cache block pool (gateway_metrics.py reads it); None before loading, on
        the generic path and for embedding engines."""
        return getattr(self.engine, "pool", None)

    @property
    def task(self) -> str:
        """"generate" or "embed" (an embedding engine); known once the engine has loaded."""
        return str(getattr(self.engine, "task", "generate"))

    @property
    def serving_path(self) -> ServingPath | None:
        """Which engine path serves the model and why, as the builder decided (None until loaded)."""
        return getattr(self.engine, "serving_path", None)

    @property
    def tokenizer(self) -> Any:
        assert self.engine is not None
        return self.engine.tokenizer

    def token_text(self, token_id: int) -> str:
        """The text of one token as a client would see it on its own (for logprobs), cached: a
        stream with logprobs asks for every token it sends and for each alternative."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text

    async def start(self) -> None:
        """Load the model (in a thread, so the server keeps answering) and start stepping."""
        self._loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            engine = await asyncio.to_thread(self._load)
        except Exception as exc:
            self.state = WorkerState.FAILED
            self.failure = f"failed to load: {exc}"
            raise
        self.engine = engine
        self.max_model_len = engine.max_model_len
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self.state = WorkerState.READY
        path = self.serving_path
        log.info("%s ready: serves %s in %.1f s%s", self.name, ", ".join(self.model_names),
                 time.perf_counter() - started, f" on {path.describe()}" if path is not None else "")

    def _load(self) -> Any:
        engine = self._engine_factory(self.config, self.index)
        # What loading made (the model, torch.compile's graphs: millions of objects) lives as long as
        # the process; frozen, the cyclic GC stops rescanning it, which stalled steps for 10-100 ms.
        gc.collect()
        gc.freeze()
        return engine

    async def stop(self) -> None:
        """Stop the engine thread; unfinished requests end with finish_reason "abort"."""
        if self._thread is None:
            return
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        gc.unfreeze()  # shutting down: let the interpreter's exit collect what loading made
        self.state = WorkerState.STOPPED

    def submit(self, prompts: list[tuple[list[int], SamplingParams]], request_id: str = "") -> RequestStream:
        """Queue one request, a sequence per (prompt, params) choice; counts at once for dispatch.

        The caller must `release()` the stream when done with it.
        """
        self._check_can_accept(prompts)
        seq_ids = [next(self._seq_ids) for _ in prompts]
        stream = RequestStream(seq_ids, request_id)
        stream.prompt_ids = [ids for ids, _ in prompts]
        for seq_id in seq_ids:
            self._streams[seq_id] = stream
        self._inbox.put(_Add(seq_ids, prompts))
        return stream

    def release(self, stream: RequestStream) -> None:
        """Abort whatever of the request is unfinished (a no-op once it has finished)."""
        if not stream.is_finished:
            self._inbox.put(_Abort(sorted(stream.unfinished)))

    def abort_all(self) -> None:
        """Abort every unfinished sequence (shutdown after the drain timeout)."""
        if self._streams:
            self._inbox.put(_Abort(sorted(self._streams)))


    def _check_can_accept(self, prompts: list[tuple[list[int], SamplingParams]]) -> None:
        """400 for a request that could never run here, 503 for one that cannot run now. Messages name
        the limits, never the worker: clients know models, not the server's insides."""
        if self.state is WorkerState.FAILED:
            raise WorkerDeadError("the model's engine has failed and takes no requests; retry later")
        if self.state is not WorkerState.READY:
            raise ServiceUnavailableError("the model is not ready yet; retry shortly")
        capacity = self.config.max_num_seqs + self.config.max_waiting
        if len(prompts) > capacity:
            raise InvalidRequestError(
                f"this request needs {len(prompts)} sequences (prompts x n), more than this model can ever "
                f"hold at once: {capacity} (max_num_seqs {self.config.max_num_seqs} + max_waiting "
                f"{self.config.max_waiting})")
        pool = getattr(self.engine, "pool", None)  # a paged KV cache (embedding engines keep none)
        kv_tokens = getattr(pool, "num_blocks", 0) * getattr(pool, "block_size", 0)
        if kv_tokens:
            wanted = max(len(ids) + params.max_tokens for ids, params in prompts)
            if wanted > kv_tokens:
                raise InvalidRequestError(f"a sequence of this request needs {wanted} tokens (prompt + max_tokens), "
                                          f"more than the model's KV cache holds: {kv_tokens}")
        waiting_after = self.num_unfinished + len(prompts) - self.config.max_num_seqs
        if waiting_after > self.config.max_waiting:
            raise ServiceUnavailableError("the server is overloaded; retry shortly")

    # ---- engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        assert self.engine is not None
        engine = self.engine
        try:
            device = getattr(engine, "device", None)
            if device is not None and device.type == "cuda":
                torch.cuda.set_device(device)  # graph replays and events go to this thread's current card
            while True:
                if not self._drain_inbox(engine, block=not engine.has_work):
                    break
                if engine.has_work:
                    self._deliver(self._step(engine))
            self._deliver([out for sid in list(self._streams) if (out := engine.abort(sid)) is not None])
        except BaseException as exc:  # the loop itself died: fail everything, leave dispatch
            log.exception("%s: engine loop died", self.name)
            self.state = WorkerState.FAILED
            self.failure = f"engine loop died: {type(exc).__name__}"
            self._call_in_loop(self._fail_all, self.failure)

    def _drain_inbox(self, engine: LLMEngine, block: bool) -> bool:
        """Apply queued commands; False once asked to stop."""
        try:
            command = self._inbox.get(block=block)
        except queue.Empty:
            return True
        while True:
            if command is None:
                return False
            if isinstance(command, _Add):
                for seq_id, (prompt_ids, params) in zip(command.seq_ids, command.prompts, strict=True):
                    self._add(engine, seq_id, prompt_ids, params)
            else:
                self._deliver([out for sid in command.seq_ids if (out := engine.abort(sid)) is not None])
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _add(self, engine: LLMEngine, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        """Hand one sequence to the engine. The engines refuse bad values themselves (an error event
        of that sequence's own); should one raise all the same, that sequence alone fails and the
        loop, with every other stream, goes on."""
        try:
            engine.add(seq_id, prompt_ids, params)
        except Exception as exc:
            log.exception("%s: the engine refused sequence %d", self.name, seq_id)
            self._deliver([SequenceOutput(seq_id, "", [], [], "error", len(prompt_ids), 0,
                                          error=f"invalid request: {type(exc).__name__}")])

    def _step(self, engine: LLMEngine) -> list[SequenceOutput]:
        try:
            return engine.step()
        except Exception as exc:  # the engine isolates a bad sequence itself: this is its recovery failing
            log.exception("%s: step failed", self.name)
            return engine.fail(engine.last_scheduled, f"the model step failed: {type(exc).__name__}")

    def _deliver(self, outputs: list[SequenceOutput]) -> None:
        if outputs:
            self._call_in_loop(self._route, outputs)

    def _call_in_loop(self, fn: Any, arg: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:
            pass  # the event loop is closed: nobody is listening any more

    # ---- event loop side -------------------------------------------------------------------

    def _route(self, outputs: list[SequenceOutput]) -> None:
        now = time.monotonic()
        for output in outputs:
            stream = self._streams.get(output.seq_id)
            if stream is None:
                continue
            self._observe(stream, output, now)
            if output.finish_reason is not None:
                del self._streams[output.seq_id]
                self.num_finished += 1
                stream.finished_outputs.append(output)
                if len(stream.finished_outputs) == len(stream.seq_ids):
                    self._log_request(stream, now)
            stream.put(output)

    def _observe(self, stream: RequestStream, output: SequenceOutput, now: float) -> None:
        metrics = self._series
        if metrics is None:
            return
        if output.token_ids:
            last = stream.last_event_s.get(output.seq_id)
            if last is None:
                if stream.first_token_s is None:
                    stream.first_token_s = now
                    metrics.ttft.observe(now - stream.submitted_s)
            else:
                metrics.itl.observe((now - last) / len(output.token_ids))
            stream.last_event_s[output.seq_id] = now
        if output.finish_reason is not None:
            metrics.e2e.observe(now - stream.submitted_s)
            metrics.prompt_tokens.inc(output.num_prompt_tokens)
            metrics.generation_tokens.inc(output.num_output_tokens)
            metrics.finished(output.finish_reason).inc()

    def _log_request(self, stream: RequestStream, now: float) -> None:
        outs = stream.finished_outputs
        ttft_ms = (stream.first_token_s - stream.submitted_s) * 1000 if stream.first_token_s else float("nan")
        log.info("request %s model=%s worker=%s prompt_tokens=%d output_tokens=%d ttft_ms=%.1f "
                 "duration_ms=%.1f finish=%s", stream.request_id or "-", self.model_names[0], self.name,
                 sum(o.num_prompt_tokens for o in outs), sum(o.num_output_tokens for o in outs), ttft_ms,
                 (now - stream.submitted_s) * 1000, ",".join(sorted({o.finish_reason or "?" for o in outs})))

    def _fail_all(self, message: str) -> None:
        for seq_id, stream in list(self._streams.items()):
            stream.put(SequenceOutput(seq_id, "", [], [], "error", 0, 0, error=message))
        self._streams.clear()
