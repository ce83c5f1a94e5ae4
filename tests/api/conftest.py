"""Live servers for API tests: the real app under uvicorn on a loopback port, in a thread."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette

from llmserve.app import create_app
from llmserve.config import Config, parse_config
from tests.live_server import free_port, uvicorn_thread

__all__ = ["API_KEY", "free_port", "live_server", "tiny_config"]  # free_port: older imports from here

API_KEY = "sk-test-0123456789"


@contextlib.contextmanager
def live_server(config: Config, ready_timeout_s: float = 60.0, app: Starlette | None = None) -> Iterator[str]:
    """Serve `config` (or a prebuilt `app`) until the block exits; yields the `/v1` base URL once ready."""
    with uvicorn_thread(app or create_app(config), ready_path="/ready", ready_timeout_s=ready_timeout_s,
                        ready_options={"headers": {"Authorization": f"Bearer {API_KEY}"}},
                        lifespan="on", timeout_graceful_shutdown=5) as port:
        yield f"http://127.0.0.1:{port}/v1"


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
