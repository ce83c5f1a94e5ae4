"""Running the server process: check the config, serve with uvicorn, drain gracefully on a signal.

The drain is one a load balancer understands without retrying a 503 (measured with HAProxy in
tests/deploy/test_haproxy.py): on SIGTERM

1. /ready answers 503 at once, while new requests are still served, each response closing its
   connection, for `drain_grace` seconds: the balancer's health check sees the instance leave;
2. then the listener closes: a new connection is refused, which every balancer retries elsewhere;
3. in-flight requests finish within `shutdown_timeout`, the rest end with finish_reason "abort";
   the server shuts down and exits 0.

SIGINT (an operator's Ctrl-C) skips the grace; a second SIGINT skips the wait too.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.api.state import ServerState
from llmserve.app import create_app
from llmserve.config import Config, load_config, with_overrides
from llmserve.errors import ConfigError
from llmserve.http_limits import uvicorn_options
from llmserve.loading import check_worker, resolve_model_dir, tokenizer_dir
from llmserve.templates import check_chat_available, check_chat_template
from llmserve.tls import check_tls, is_tls, uvicorn_tls_kwargs

log = logging.getLogger(__name__)


def preflight(config: Config) -> None:
    """Fail with one clear line on impossible settings, before any worker loads."""
    check_tls(config.server)
    task_of_name: dict[str, tuple[str, int]] = {}
    for i, worker in enumerate(config.workers):
        task = check_worker(worker, f"workers[{i}]")
        check_chat_template(worker.chat_template, f"workers[{i}].chat_template")
        if task == "generate":
            model_dir = resolve_model_dir(worker.model_path, worker.revision, f"workers[{i}].model_path")
            check_chat_available(worker, tokenizer_dir(worker, model_dir, f"workers[{i}]"), f"workers[{i}]")
        for name in worker.served_names:
            other_task, other = task_of_name.setdefault(name, (task, i))
            if other_task != task:
                raise ConfigError(f'workers[{i}].model_names: "{name}" is served by workers[{other}] '
                                  f'(task "{other_task}") and by this worker (task "{task}"); '
                                  "one name serves one task")


def warn_slow_http_stack() -> list[str]:
    """Warn when uvicorn will fall back to its pure-Python pieces: without httptools every streamed
    chunk goes through h11 (benchmarks/RESULTS.md, run 17), and without uvloop through asyncio's
    own loop. Returns the missing packages."""
    missing = [name for name in ("httptools", "uvloop") if importlib.util.find_spec(name) is None]
    if missing:
        log.warning("%s not installed: uvicorn falls back to slower pure-Python HTTP handling; "
                    "`pip install %s` for full streaming throughput", " and ".join(missing), " ".join(missing))
    return missing


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase before shutdown and exit code 0 after a signal."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self._drain_task: asyncio.Task | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()

        def on_signal(sig: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self._on_signal, sig)

        originals = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int) -> None:
        if self._drain_task is not None:
            if sig == signal.SIGINT:
                self.should_exit = True
            return
        server = self.state.config.server
        grace = server.drain_grace if sig == signal.SIGTERM else 0.0
        log.info("received %s: not ready; serving %.0f s more, then draining (up to %.0f s)",
                 signal.Signals(sig).name, grace, server.shutdown_timeout)
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(grace))

    async def _drain(self, grace_s: float) -> None:
        self.state.is_leaving = True
        await asyncio.sleep(grace_s)
        # Connections already open stay open; new ones are refused. (No listeners yet when the signal
        # came during uvicorn's start-up: the main loop then exits as soon as it starts.)
        for listener in getattr(self, "servers", []):
            listener.close()
        log.info("listener closed: finishing %d in-flight sequences",
                 sum(w.num_unfinished for w in self.state.workers))
        deadline = time.monotonic() + self.state.config.server.shutdown_timeout
        while any(w.num_unfinished for w in self.state.workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = sum(w.num_unfinished for w in self.state.workers)
        if left:
            log.warning("shutdown timeout: aborting %d unfinished sequences", left)
            for worker in self.state.workers:
                worker.abort_all()
            for _ in range(100):  # let the aborted streams send their last chunks
                if not any(w.num_unfinished for w in self.state.workers):
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
        self.should_exit = True


def closing_when_leaving(app: ASGIApp, state: ServerState) -> ASGIApp:
    """The app, with `Connection: close` on every response begun while the server is leaving, so a
    balancer's pooled connections end after their answer instead of being reused once the listener
    has closed (uvicorn closes a connection whose response says so)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not state.is_leaving:
            await app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_closing)

    return wrapped


GIL_SWITCH_INTERVAL_S = 0.0005


def serve(config_path: str, host: str | None = None, port: int | None = None, log_level: str = "info") -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    config = with_overrides(load_config(config_path), host=host, port=port)
    preflight(config)
    warn_slow_http_stack()
    # Engine threads give up the GIL at every CUDA call and then wait for the event loop to hand it
    # back; at the default 5 ms switch interval a busy loop stretches every step by milliseconds.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    app = create_app(config)
    scheme = "https" if is_tls(config.server) else "http"
    log.info("llmserve listening on %s://%s:%d", scheme, config.server.host, config.server.port)
    uv_config = uvicorn.Config(closing_when_leaving(app, app.state.server), host=config.server.host, port=config.server.port, log_level=log_level,
                               access_log=False, timeout_graceful_shutdown=5, **uvicorn_tls_kwargs(config.server),
                               **uvicorn_options(config.server))
    DrainingServer(uv_config, app.state.server).run()
    return 0
