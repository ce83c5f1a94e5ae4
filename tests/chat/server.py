"""`llmserve run` as a subprocess on a free loopback port, for tests that need a real server."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

MODEL_NAME = "tiny-llama"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    log_path = work_dir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmserve", "run", str(config), "--port", str(port), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, process, log_path, ready_timeout_s)
        yield f"{base}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _wait_ready(base: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llmserve run exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"llmserve run was not ready in {timeout_s} s: {log_path.read_text()[-2000:]}")
