"""The `llmserve` command: run serves until SIGTERM and exits 0; bad configs fail in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.live_server import free_port, is_running, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def _write_config(tmp_path: Path, model_dir: Path, port: int, **worker: object) -> Path:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in worker.items())
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\nport = {port}\ndrain_grace = 0\n[[workers]]\nmodel_path = "{model_dir}"\n'
                    f'model_names = ["tiny"]\nkv_cache_tokens = 8192\n{extra}')
    return path


def test_run_serves_then_exits_zero_on_sigterm(tmp_path: Path, tiny_model_dir: Path) -> None:
    port = free_port()
    config = _write_config(tmp_path, tiny_model_dir, port)
    proc = subprocess.Popen([sys.executable, "-m", "llmserve", "run", str(config), "--log-level", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", is_running(proc), 90)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "worker-0 ready: serves tiny" in output


def test_bad_config_fails_with_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = _write_config(tmp_path, tiny_model_dir, free_port(), device="cuda:3")
    result = subprocess.run([sys.executable, "-m", "llmserve", "run", str(config)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("llmserve: workers[0].device = \"cuda:3\"")


def test_missing_weights_fail_before_serving(tmp_path: Path) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    config = _write_config(tmp_path, empty, free_port())
    result = subprocess.run([sys.executable, "-m", "llmserve", "run", str(config)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "no model weights" in result.stderr
