"""GET /v1/models, /v1/models/{id}, /health and /ready."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.api.state import server_state
from llmserve.errors import ModelNotFoundError
from llmserve.worker import Worker


def _card(name: str, created: int, workers: list[Worker]) -> dict:
    """A model object, with an extra `llmserve` field (clients ignore unknown fields): the engine path
    that serves the model and why, "mixed" when its ready workers take different paths (each listed)."""
    served = [{"worker": w.name, "engine_path": path.name, "reason": path.reason} for w in workers
              if w.is_ready and name in w.model_names and (path := w.serving_path) is not None]
    summary: dict[str, Any] = {"engine_path": None, "reason": None, "workers": served}
    if len({s["engine_path"] for s in served}) == 1:
        summary.update(engine_path=served[0]["engine_path"], reason=served[0]["reason"])
    elif served:
        summary.update(engine_path="mixed", reason="its workers take different paths")
    return {"id": name, "object": "model", "created": created, "owned_by": "llmserve", "llmserve": summary}


async def list_models(request: Request) -> JSONResponse:
    """Every name served by a ready worker (a name appears as soon as one of its workers is ready)."""
    state = server_state(request)
    created = request.app.state.started_s
    data = [_card(n, created, state.workers) for n in state.dispatcher.ready_model_names()]
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> JSONResponse:
    state = server_state(request)
    name = request.path_params["model"]
    if name not in state.dispatcher.ready_model_names():
        raise ModelNotFoundError(f"The model '{name}' does not exist", param="model")
    return JSONResponse(_card(name, request.app.state.started_s, state.workers))


async def health(request: Request) -> JSONResponse:
    """The process is alive and answering."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    """200 when every worker is loaded and healthy, else 503 with each worker's state (and from
    SIGTERM on, "draining")."""
    state = server_state(request)
    workers = [{"name": w.name, "models": list(w.model_names), "state": w.state.value,
                **_load(w, state.metrics.per_model), **_engine_path(w), **({"reason": w.failure} if w.failure else {})}
               for w in state.workers]
    if state.is_leaving:  # shutting down: load balancers stop sending work (server.py's drain)
        return JSONResponse({"status": "draining", "workers": workers}, status_code=503)
    is_ready = all(w.is_ready for w in state.workers)
    return JSONResponse({"status": "ready" if is_ready else "not ready", "workers": workers},
                        status_code=200 if is_ready else 503)


def _engine_path(worker: Worker) -> dict:
    """Which engine path serves the worker's model and why (null until it has loaded)."""
    path = worker.serving_path
    return {"engine_path": path.name if path else None, "engine_path_reason": path.reason if path else None}


def _load(worker: Worker, is_shown: bool) -> dict:
    """A worker's load counts; none while the arena serves battles and /metrics sums over models: a
    worker's counts moving around one battle message would name the hidden model (see metrics.py)."""
    if not is_shown:
        return {}
    return {"num_running": worker.num_running, "num_waiting": worker.num_waiting,
            "num_unfinished": worker.num_unfinished, "num_finished": worker.num_finished}


async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
