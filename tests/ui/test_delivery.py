"""A battle side counts as answered only when a 200 answer for its alias went out in full."""

from __future__ import annotations

import asyncio

from llmserve.ui.battles import BattleStore
from llmserve.ui.delivery import BattleDeliveryMiddleware


def _chat_app(store: BattleStore, alias: str, status: int, bodies: list[bytes], *, finishes: bool = True):
    """A stand-in for the chat route: resolves the model as the API does, then answers."""

    async def app(scope, receive, send) -> None:
        assert store.resolve_alias(alias) is not None or not alias.startswith("battle-")
        await send({"type": "http.response.start", "status": status, "headers": []})
        for body in bodies:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        if finishes:  # a client that left never gets the last message
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def _call(store: BattleStore, app, path: str = "/v1/chat/completions") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    asyncio.run(BattleDeliveryMiddleware(app, store)(scope, receive, send))
    return sent


def test_only_a_whole_successful_answer_marks_its_side() -> None:
    store = BattleStore()
    battle = store.create(["a", "b"])
    left = battle.alias("left")
    chunk = b'data: {"id":"x","choices":[]}\n\n'
    error_event = b'data: {"error":{"message":"the model step failed","type":"internal_error"}}\n\n'
    for status, bodies, finishes in [(400, [b'{"error":{}}'], True),  # refused
                                     (200, [chunk, error_event, b"data: [DONE]\n\n"], True),  # failed mid-stream
                                     (200, [chunk], False),  # the client left
                                     (200, [chunk], True)]:  # ... but the whole answer elsewhere does
        _call(store, _chat_app(store, left, status, bodies, finishes=finishes), path="/v1/completions")
    assert battle.delivered == set()
    for status, bodies, finishes in [(400, [b'{"error":{}}'], True), (200, [chunk, error_event], True),
                                     (200, [chunk], False)]:
        sent = _call(store, _chat_app(store, left, status, bodies, finishes=finishes))
        assert len(sent) == 1 + len(bodies) + finishes  # everything passes through untouched
        assert battle.delivered == set()
    _call(store, _chat_app(store, left, 200, [chunk, b"data: [DONE]\n\n"]))
    assert battle.delivered == {"left"} and not battle.is_answered
    _call(store, _chat_app(store, "tiny-a", 200, [b"{}"]))  # a named request marks nothing
    _call(store, _chat_app(store, battle.alias("right"), 200, [b'{"choices":[]}']))
    assert battle.is_answered
    assert store.answering.get() is None  # the request's record does not outlive it
