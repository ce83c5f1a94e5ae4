"""`create_app(config)`: the Starlette application with its routes, middleware and worker lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmserve.api import chat, completions, embeddings, models, responses, tokenize
from llmserve.api.middleware import APIKeyMiddleware, BodySizeLimitMiddleware, SecurityHeadersMiddleware
from llmserve.api.state import ServerState
from llmserve.config import Config
from llmserve.dispatch import Dispatcher, make_policy
from llmserve.errors import (
    ClientDisconnectedError,
    LLMServeError,
    MethodNotAllowedError,
    RouteNotFoundError,
    error_body,
    render_error,
)
from llmserve.logs import install_log_escaping
from llmserve.metrics import ServerMetrics
from llmserve.ui import routes as ui
from llmserve.ui.battles import BattleStore
from llmserve.ui.delivery import BattleDeliveryMiddleware
from llmserve.worker import Worker

log = logging.getLogger(__name__)

# Routes that answer without an API key.
OPEN_PATHS = ("/health",)

EngineFactory = Callable[..., Any]


def create_app(config: Config, engine_factory: EngineFactory | None = None) -> Starlette:
    """The whole server for one config; workers load in the background once it starts."""
    if engine_factory is None:
        from llmserve.engine.builder import build_worker_engine

        engine_factory = build_worker_engine
    install_log_escaping()  # request paths, headers and names reach log lines
    metrics = ServerMetrics(per_model=_shows_per_model(config))
    workers = [Worker(wc, i, engine_factory, metrics) for i, wc in enumerate(config.workers)]
    metrics.watch_workers(workers)
    state = ServerState(config, workers, Dispatcher(workers, make_policy(config.server.dispatch)), metrics)
    battles = BattleStore()
    if config.ui.enabled:
        state.resolve_alias = battles.resolve_alias  # arena battles' opaque model names

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(_start_workers(workers))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await asyncio.gather(*(w.stop() for w in workers))

    app = Starlette(
        routes=_routes() + (ui.ui_routes(config, battles) if config.ui.enabled else []),
        middleware=_middleware(config) + ([Middleware(BattleDeliveryMiddleware, battles=battles)]
                                          if config.ui.enabled else []),
        exception_handlers={LLMServeError: _llmserve_error, HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.server = state
    app.state.started_s = int(time.time())
    return app


def _shows_per_model(config: Config) -> bool:
    """Whether /metrics and /ready may show per-model and per-worker load: not while the arena can
    pit two names against each other, whose hidden models they would name (see metrics.py)."""
    names = {name for worker in config.workers for name in worker.served_names}
    return not config.ui.enabled or config.ui.per_model_metrics or len(names) < 2


def _routes() -> list[Route]:
    return [
        Route("/health", models.health, methods=["GET"]),
        Route("/ready", models.ready, methods=["GET"]),
        Route("/metrics", models.metrics, methods=["GET"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", models.retrieve_model, methods=["GET"]),
        Route("/v1/chat/completions", chat.create_chat_completion, methods=["POST"]),
        Route("/v1/completions", completions.create_completion, methods=["POST"]),
        Route("/v1/responses", responses.create_response, methods=["POST"]),
        Route("/v1/embeddings", embeddings.create_embedding, methods=["POST"]),
        Route("/v1/engines/{model:path}/embeddings", embeddings.create_embedding, methods=["POST"]),
        Route("/v1/tokenize", tokenize.tokenize, methods=["POST"]),
        Route("/v1/detokenize", tokenize.detokenize, methods=["POST"]),
        Route("/api/v1/token_check", tokenize.token_check, methods=["POST"]),
    ]


def _middleware(config: Config) -> list[Middleware]:
    server = config.server
    stack = [Middleware(SecurityHeadersMiddleware, headers={"X-Content-Type-Options": "nosniff"},
                        prefix_headers={prefix: ui.PAGE_HEADERS for prefix in ui.OPEN_PREFIXES})]
    if server.allowed_origins:
        stack.append(Middleware(CORSMiddleware, allow_origins=list(server.allowed_origins),
                                allow_credentials=server.allow_credentials,
                                allow_methods=list(server.allowed_methods),
                                allow_headers=list(server.allowed_headers)))
    stack.append(Middleware(BodySizeLimitMiddleware, max_bytes=server.max_request_bytes))
    open_paths = OPEN_PATHS + ui.OPEN_PATHS + (() if server.metrics_require_key else ("/metrics",))
    stack.append(Middleware(APIKeyMiddleware, keys=server.api_keys, open_paths=open_paths,
                            open_prefixes=ui.OPEN_PREFIXES))
    return stack


async def _start_workers(workers: list[Worker]) -> None:
    """Load workers one after another; a failure is logged and shown by /ready. Then everything
    loading made (modules, vocabularies, compiled code) is moved out of the garbage collector's
    reach: a full collection, which any request creating many containers can set off, walked those
    ~400k objects while holding the GIL (191 ms, every stream stalled) and takes ~3 ms without them."""
    for worker in workers:
        try:
            await worker.start()
        except Exception as exc:
            log.error("%s failed to load %s: %s", worker.name, worker.config.model_path, exc)
    gc.collect()
    gc.freeze()


def _count_error(request: Request, error_type: str, status: int) -> None:
    request.app.state.server.metrics.errors.labels(error_type, str(status)).inc()


async def _llmserve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LLMServeError)
    if isinstance(exc, ClientDisconnectedError):  # nobody is left to read an answer: not our error
        return Response(status_code=exc.status_code)
    _count_error(request, exc.error_type, exc.status_code)
    return JSONResponse(render_error(exc), status_code=exc.status_code, headers=exc.headers())


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err: LLMServeError = RouteNotFoundError(f"no route {request.method} {request.url.path}")
    elif exc.status_code == 405:
        err = MethodNotAllowedError(f"method {request.method} not allowed on {request.url.path}")
    else:
        _count_error(request, "invalid_request_error", exc.status_code)
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)
    _count_error(request, err.error_type, err.status_code)
    return JSONResponse(render_error(err), status_code=err.status_code)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    _count_error(request, "internal_error", 500)
    return JSONResponse(error_body("internal server error", "internal_error"), status_code=500)
