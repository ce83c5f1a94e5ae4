"""GET /v1/models, /v1/models/{id}, /health and /ready."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.api.state import server_state
from llmserve.errors import ModelNotFoundError


def _card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "llmserve"}


async def list_models(request: Request) -> JSONResponse:
    """Every name served by a ready worker (a name appears as soon as one of its workers is ready)."""
    state = server_state(request)
    created = request.app.state.started_s
    return JSONResponse({"object": "list", "data": [_card(n, created) for n in state.dispatcher.ready_model_names()]})


async def retrieve_model(request: Request) -> JSONResponse:
    state = server_state(request)
    name = request.path_params["model"]
    if name not in state.dispatcher.ready_model_names():
        raise ModelNotFoundError(f"The model '{name}' does not exist", param="model")
    return JSONResponse(_card(name, request.app.state.started_s))


async def health(request: Request) -> JSONResponse:
    """The process is alive and answering."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    """200 when every worker is loaded and healthy, else 503 with each worker's state."""
    state = server_state(request)
    workers = [{"name": w.name, "models": list(w.model_names), "state": w.state.value,
                "num_running": w.num_running, "num_waiting": w.num_waiting, "num_unfinished": w.num_unfinished,
                "num_finished": w.num_finished, **({"reason": w.failure} if w.failure else {})}
               for w in state.workers]
    is_ready = all(w.is_ready for w in state.workers)
    return JSONResponse({"status": "ready" if is_ready else "not ready", "workers": workers},
                        status_code=200 if is_ready else 503)


async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
