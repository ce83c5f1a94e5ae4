"""What the HTTP handlers share: the config, the workers and the dispatcher (on `app.state`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from llmserve.config import Config
from llmserve.dispatch import Dispatcher
from llmserve.errors import InvalidRequestError, ServiceUnavailableError
from llmserve.metrics import ServerMetrics
from llmserve.worker import Worker

_WRONG_TASK = {
    "generate": "The model '{model}' is an embedding model: it serves POST /v1/embeddings, "
                "not chat or text completions",
    "embed": "The model '{model}' generates text and serves no embeddings; to embed with a causal LM, "
             'serve it in a worker with task = "embed" (last-token pooling)',
}


@dataclass
class ServerState:
    """Everything one server process serves; created by `create_app`, never global."""

    config: Config
    workers: list[Worker]
    dispatcher: Dispatcher
    metrics: ServerMetrics
    # Set on SIGTERM (server.py): /ready answers 503 and responses close their connections, while
    # requests are still served; load balancers take the instance out before its listener closes.
    is_leaving: bool = False
    # Maps a model alias (an anonymous arena battle's side) to a served name, else None; set by the UI.
    resolve_alias: Callable[[str], str | None] | None = None

    def choose_worker(self, model: str, task: str | None = "generate") -> Worker:
        """The worker for a new request.

        `model` may be an alias that `resolve_alias` maps to a served name; errors keep naming the alias.
        `task` is what the route needs ("generate" or "embed"; None for either): asking a
        model for what it does not serve is a 400 naming the route it does serve.
        """
        real = self.resolve_alias(model) if self.resolve_alias is not None else None
        if real is None:
            worker = self.dispatcher.choose(model)
        else:
            try:
                worker = self.dispatcher.choose(real)
            except ServiceUnavailableError:  # its message names the real model: keep the alias secret
                raise ServiceUnavailableError(f"no worker serving '{model}' is ready", retry_after_s=5) from None
        assert isinstance(worker, Worker)
        if task is not None and worker.task != task:
            raise InvalidRequestError(_WRONG_TASK[task].format(model=model), param="model")
        return worker


def server_state(request: Request) -> ServerState:
    return request.app.state.server
