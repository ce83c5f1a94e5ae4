"""`llmserve run` as a subprocess on a free loopback port, for tests that need a real server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.live_server import free_port, llmserve_run

__all__ = ["MODEL_NAME", "free_port", "running_server", "write_config"]  # free_port: older imports from here

MODEL_NAME = "tiny-llama"


def write_config(path: Path, model_dir: Path) -> Path:
    """A one-worker config serving the tiny model as MODEL_NAME, without the browser UI."""
    path.write_text(
        f'[server]\ndrain_grace = 0\n[[workers]]\nmodel_path = "{model_dir}"\nmodel_names = ["{MODEL_NAME}"]\n'
        'dtype = "float32"\nkv_cache_tokens = 8192\nmax_num_seqs = 4\n',
        encoding="utf-8",
    )
    return path


@contextlib.contextmanager
def running_server(model_dir: Path, work_dir: Path, ready_timeout_s: float = 60.0) -> Iterator[str]:
    """Run `llmserve run` until the block exits; yields the /v1 base URL once /ready answers 200."""
    config = write_config(work_dir / "server.toml", model_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with llmserve_run([str(config), "--port", str(port), "--log-level", "warning"], work_dir / "server.log",
                      f"{base}/ready", ready_timeout_s):
        yield f"{base}/v1"
