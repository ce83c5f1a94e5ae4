"""Live servers for API tests: the real app under uvicorn on a loopback port, in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from llmserve.app import create_app
from llmserve.config import Config, parse_config

API_KEY = "sk-test-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(config: Config, ready_timeout_s: float = 60.0, app: Starlette | None = None) -> Iterator[str]:
    """Serve `config` (or a prebuilt `app`) until the block exits; yields the `/v1` base URL once ready."""
    port = free_port()
    app = app or create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    headers = {"Authorization": f"Bearer {API_KEY}"}
    while True:
        try:
            if httpx.get(f"{base}/ready", headers=headers, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not become ready")
        time.sleep(0.05)
    try:
        yield f"{base}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def tiny_config(model_dir, *, workers: int = 1, names: tuple[str, ...] = ("tiny-llama",), **server) -> Config:
    worker = {"model_path": str(model_dir), "model_names": list(names), "dtype": "float32",
              "kv_cache_tokens": 16384, "max_num_seqs": 32}
    return parse_config({"server": server, "workers": [dict(worker) for _ in range(workers)]})


@pytest.fixture(scope="session")
def base_url(tiny_model_dir) -> Iterator[str]:
    """One tiny-model server shared by the API tests."""
    with live_server(tiny_config(tiny_model_dir)) as url:
        yield url


@pytest.fixture(scope="session")
def keyed_base_url(tiny_model_dir) -> Iterator[str]:
    """A server that requires API keys and allows one CORS origin."""
    config = tiny_config(tiny_model_dir, api_keys=[API_KEY], allowed_origins=["http://ui.example"])
    with live_server(config) as url:
        yield url
