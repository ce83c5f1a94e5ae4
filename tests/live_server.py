"""Live servers for tests: a free loopback port, an ASGI app under uvicorn in a thread, readiness polls.

Not a conftest: test modules and fixtures import what they need (`from tests.live_server import ...`).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    """A loopback port nobody listens on right now (for servers started in another process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(
    url: str,
    is_alive: Callable[[], bool],
    timeout_s: float,
    *,
    describe: Callable[[], str] = str,
    poll_s: float = 0.1,
    **get_options: Any,
) -> None:
    """Poll GET `url` until it answers 200. RuntimeError (ending with `describe()`, e.g. a log's tail)
    once `is_alive()` turns false or `timeout_s` passes. `get_options` go to httpx.get (headers, verify)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2, **get_options).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not is_alive():
            raise RuntimeError(f"the server behind {url} exited before it was ready: {describe()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s: {describe()}")
        time.sleep(poll_s)


def is_running(process: subprocess.Popen[Any]) -> Callable[[], bool]:
    """`wait_ready`'s `is_alive` for a server in a child process."""
    return lambda: process.poll() is None


@contextlib.contextmanager
def uvicorn_thread(
    app: Any,
    *,
    ready_path: str | None = None,
    ready_timeout_s: float = 20.0,
    ready_options: dict[str, Any] | None = None,
    **config: Any,
) -> Iterator[int]:
    """Serve `app` under uvicorn in a daemon thread until the block exits; yields the loopback port.

    The socket is bound here and handed to uvicorn, so no other process can take the port between
    choosing and listening. Ready once uvicorn listens, or with `ready_path` once GET of that path
    answers 200 (`ready_options` go to httpx.get). `config` goes to uvicorn.Config (log_level
    "warning" unless given): lifespan, limits, TLS arguments.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", **config}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if ready_path is not None:
            wait_ready(
                f"http://127.0.0.1:{port}{ready_path}",
                thread.is_alive,
                ready_timeout_s,
                poll_s=0.05,
                **(ready_options or {}),
            )
        deadline = time.monotonic() + ready_timeout_s
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextlib.contextmanager
def llmserve_run(
    args: list[str],
    log_path: Path,
    ready_url: str,
    ready_timeout_s: float,
    stop_timeout_s: float = 15.0,
    **ready_options: Any,
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m llmserve run *args` (its output in `log_path`) until the block exits: SIGTERM, then
    SIGKILL after `stop_timeout_s`. Yields the process once GET `ready_url` answers 200."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmserve", "run", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_ready(
            ready_url,
            is_running(process),
            ready_timeout_s,
            describe=lambda: log_path.read_text(errors="replace")[-2000:],
            **ready_options,
        )
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=stop_timeout_s)
