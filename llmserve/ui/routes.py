"""The UI's routes: three pages, their static files, and the battle, vote and leaderboard endpoints.

Pages and static files hold no data, so they are open even when API keys are set
(`OPEN_PATHS`, `OPEN_PREFIXES`); the JSON endpoints do work and need a key like `/v1`.
Everything here is built per app by `ui_routes(config, battles)`: no module-level state. The battle
store is created by `create_app`, which also lets the API resolve battle aliases through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from llmserve.api.json_body import read_body
from llmserve.api.state import ServerState, server_state
from llmserve.config import Config
from llmserve.ui.battles import SIDES, BattleStore
from llmserve.ui.leaderboard import compute_leaderboard
from llmserve.ui.limits import RateLimiter, client_key
from llmserve.ui.votes import Vote, VoteRequest, VoteStore, make_vote

STATIC_DIR = Path(__file__).parent / "static"
PAGES = {"/": "index.html", "/arena": "arena.html", "/leaderboard": "leaderboard.html"}
OPEN_PATHS = tuple(PAGES)
OPEN_PREFIXES = ("/ui/static/",)

# The pages load only their own scripts and styles and talk only to this server.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def ui_routes(config: Config, battles: BattleStore) -> list[BaseRoute]:
    """Routes of the browser UI for one app; `battles` also resolves battle aliases for the API."""
    handlers = UIHandlers(config, battles)
    routes: list[BaseRoute] = [Route(path, _page(name), methods=["GET"]) for path, name in PAGES.items()]
    routes += [
        Mount("/ui/static", app=StaticFiles(directory=STATIC_DIR), name="ui-static"),
        Route("/ui/api/battle", handlers.battle, methods=["POST"]),
        Route("/ui/api/vote", handlers.vote, methods=["POST"]),
        Route("/ui/api/leaderboard", handlers.leaderboard, methods=["GET"]),
    ]
    return routes


def _page(name: str) -> Callable[[Request], Awaitable[FileResponse]]:
    """An endpoint serving one HTML page with its security headers."""
    path = STATIC_DIR / name

    async def page(request: Request) -> FileResponse:
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    return page


class UIHandlers:
    """The endpoints that do work, sharing one vote store, one battle store and the rate limits."""

    def __init__(self, config: Config, battles: BattleStore) -> None:
        ui = config.ui
        self.store = VoteStore(Path(ui.votes_path), ui.votes_max_bytes, ui.votes_backups)
        self.battles = battles
        self.leaderboard_window = ui.leaderboard_window
        self.api_keys = config.server.api_keys
        self.battle_limit = RateLimiter("battles", ui.battles_per_minute)
        self.vote_limit = RateLimiter("votes", ui.votes_per_minute)

    async def battle(self, request: Request) -> JSONResponse:
        """POST /ui/api/battle: the server picks two models; the page only gets their aliases."""
        self.battle_limit.check(client_key(request, self.api_keys))
        battle = self.battles.create(_generation_models(server_state(request)))
        return JSONResponse({"object": "battle", "battle_id": battle.battle_id,
                             **{side: battle.alias(side) for side in SIDES}})

    async def vote(self, request: Request) -> JSONResponse:
        """POST /ui/api/vote: validate, then append one line to the votes file; the answer names the models."""
        self.vote_limit.check(client_key(request, self.api_keys))
        body = await read_body(request, VoteRequest)
        served = server_state(request).dispatcher.all_model_names()
        vote = make_vote(body, served, self.battles, time.time())
        await asyncio.to_thread(self.store.append, vote)
        battle = {"battle_id": body.battle_id} if body.battle_id is not None else {}
        return JSONResponse({"object": "vote", **battle, **asdict(vote)})

    async def leaderboard(self, request: Request) -> JSONResponse:
        """GET /ui/api/leaderboard: ratings from the latest `ui.leaderboard_window` battle votes."""
        votes = await asyncio.to_thread(self.store.read_recent, self.leaderboard_window, _is_anonymous)
        rows = compute_leaderboard(votes)
        return JSONResponse({"object": "list", "num_votes": len(votes), "data": [asdict(r) for r in rows]})


def _is_anonymous(vote: Vote) -> bool:
    return vote.anonymous


def _generation_models(state: ServerState) -> list[str]:
    """Names served by a ready text-generation worker, in configuration order."""
    names = (name for w in state.workers if w.is_ready and w.task == "generate" for name in w.model_names)
    return list(dict.fromkeys(names))
