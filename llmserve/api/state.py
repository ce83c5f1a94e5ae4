"""What the HTTP handlers share: the config, the workers and the dispatcher (on `app.state`)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from llmserve.config import Config
from llmserve.dispatch import Dispatcher
from llmserve.worker import Worker


@dataclass
class ServerState:
    """Everything one server process serves; created by `create_app`, never global."""

    config: Config
    workers: list[Worker]
    dispatcher: Dispatcher


def server_state(request: Request) -> ServerState:
    return request.app.state.server
