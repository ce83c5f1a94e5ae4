"""What the HTTP handlers share: the config, the workers and the dispatcher (on `app.state`)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from llmserve.config import Config
from llmserve.dispatch import Dispatcher
from llmserve.errors import ServiceUnavailableError
from llmserve.metrics import ServerMetrics
from llmserve.worker import Worker


@dataclass
class ServerState:
    """Everything one server process serves; created by `create_app`, never global."""

    config: Config
    workers: list[Worker]
    dispatcher: Dispatcher
    metrics: ServerMetrics
    is_draining: bool = False  # set on SIGTERM: new work gets 503 while in-flight requests finish


    def choose_worker(self, model: str) -> Worker:
        """The worker for a new request; 503 while the server drains for shutdown."""
        if self.is_draining:
            raise ServiceUnavailableError("the server is shutting down", retry_after_s=5)
        worker = self.dispatcher.choose(model)
        assert isinstance(worker, Worker)
        return worker


def server_state(request: Request) -> ServerState:
    return request.app.state.server
