"""Live UI servers for the tests: two tiny models, the app kept at hand, votes in a temp file."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette

from llmserve.app import create_app
from llmserve.config import Config, parse_config

API_KEY = "sk-ui-test-0123456789"
MODELS = ("tiny-a", "tiny-b")


def ui_config(model_dir: Path | str, votes_path: Path, *, enabled: bool = True, **server: object) -> Config:
    """Two workers on the same tiny model, one name each, with the UI writing votes to `votes_path`."""
    workers = [{"model_path": str(model_dir), "model_names": [name], "dtype": "float32",
                "kv_cache_tokens": 8192, "max_num_seqs": 8} for name in MODELS]
    return parse_config({"server": server, "workers": workers,
                         "ui": {"enabled": enabled, "votes_path": str(votes_path)}})


@dataclass
class LiveServer:
    """A running server: its root URL, its app (for the workers' state) and its votes file."""

    url: str
    app: Starlette
    votes_path: Path

    def num_unfinished(self) -> int:
        """Sequences the workers still hold, running or waiting."""
        return sum(w.num_unfinished for w in self.app.state.server.workers)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(config: Config, ready_timeout_s: float = 60.0) -> Iterator[LiveServer]:
    """Serve `config` under uvicorn in a thread until the block exits; yields once every worker is ready."""
    port = _free_port()
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    deadline = time.monotonic() + ready_timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", headers=headers, timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not become ready")
        time.sleep(0.05)
    try:
        yield LiveServer(url, app, Path(config.ui.votes_path))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
