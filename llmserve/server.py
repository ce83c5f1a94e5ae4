"""Running the server process: load and check the config, then serve with uvicorn until a signal."""

from __future__ import annotations

import logging

import uvicorn

from llmserve.app import create_app
from llmserve.config import Config, load_config, with_overrides
from llmserve.loading import check_weights, resolve_device

log = logging.getLogger(__name__)


def preflight(config: Config) -> None:
    """Fail with one clear line on impossible settings, before any worker loads."""
    for i, worker in enumerate(config.workers):
        resolve_device(worker.device, f"workers[{i}].device")
        check_weights(worker.model_path, worker.allow_pickle, f"workers[{i}].model_path")


def serve(config_path: str, host: str | None = None, port: int | None = None, log_level: str = "info") -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code."""
    config = with_overrides(load_config(config_path), host=host, port=port)
    preflight(config)
    app = create_app(config)
    log.info("llmserve listening on http://%s:%d", config.server.host, config.server.port)
    uvicorn.run(app, host=config.server.host, port=config.server.port, log_level=log_level,
                access_log=False, timeout_graceful_shutdown=30)
    return 0
