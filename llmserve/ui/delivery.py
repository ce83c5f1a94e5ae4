"""Battle answers on their way out: a pure ASGI middleware around the chat route.

The API resolves a battle alias deep inside the chat handler, through `BattleStore.resolve_alias`;
this middleware gives each chat request an `Answer` record in the store's context variable (with
the request's JSON object when its body may name a battle, for the battle's request check), so resolving the alias tells it
which battle side the request answers without the API knowing about battles. Then, for a battle
side only:

- the answer is rewritten by `anonymity.BattleAnswer` so that nothing in it tells the model (no
  usage, no model-specific fields, text re-cut at word boundaries);
- any error (an error status, an error event mid-stream, an exception before the response started)
  goes out as the one generic battle error, and voids the battle;
- a 200 whose last body message is sent with no error marks the side delivered (a battle takes a
  vote only once both sides were). A client that leaves before the end marks nothing.

Errors raised before the alias resolved (a malformed body, a refused battle field) depend on the
request alone and pass through untouched. For a request that names no battle the watch is one
attribute check per message.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.ui.anonymity import (
    GENERIC_BODY,
    GENERIC_STATUS,
    BattleAnswer,
    battle_headers,
    read_battle_request,
)
from llmserve.ui.battles import Answer, BattleStore

CHAT_PATH = "/v1/chat/completions"
log = logging.getLogger(__name__)


class BattleDeliveryMiddleware:
    """Rewrites battle answers so they cannot name their model; marks a side delivered once its
    answer went out in full, and its battle failed when the answer did."""

    def __init__(self, app: ASGIApp, battles: BattleStore) -> None:
        self.app = app
        self.battles = battles

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != CHAT_PATH:
            await self.app(scope, receive, send)
            return
        answer = Answer()
        token = self.battles.answering.set(answer)

        async def kept() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                answer.body += message.get("body", b"")
                if not message.get("more_body", False):  # whole: parsed now if it may name a battle
                    answer.request = await read_battle_request(bytes(answer.body))
                    answer.body = bytearray()
            return message

        watch = _BattleWatch(self.battles, answer, send)
        try:
            await self.app(scope, kept, watch.send)
        except Exception:
            if answer.alias is None or watch.has_started:
                raise
            log.exception("a battle answer failed")  # the client gets the generic error, not a 500
            await watch.fail()
        finally:
            self.battles.answering.reset(token)


class _BattleWatch:
    """The `send` of one chat request: passes a named request's messages on, rewrites a battle side's."""

    def __init__(self, battles: BattleStore, answer: Answer, send: Send) -> None:
        self.battles = battles
        self.answer = answer
        self._send = send
        self.has_started = False  # the client was sent the response start
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._is_stream = False
        self._whole = b""  # a non-streamed 200 answer, sent rewritten once complete
        self._rewriter: BattleAnswer | None = None

    async def send(self, message: Message) -> None:
        alias = self.answer.alias
        if alias is None:
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            self._status = message["status"]
            self._headers = list(message.get("headers", []))
            self._is_stream = any(name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                                  for name, value in self._headers)
            self._rewriter = BattleAnswer(alias)
            if self._status == 200 and self._is_stream:
                await self._start(200, battle_headers(self._headers, None))
            return
        if message["type"] != "http.response.body" or self._rewriter is None:
            await self._send(message)
            return
        is_last = not message.get("more_body", False)
        body = message.get("body", b"")
        if self._status != 200:
            if is_last:
                await self.fail()
        elif self._is_stream:
            out = self._rewriter.stream(body, is_last)
            if self._rewriter.is_failed:
                self.battles.mark_failed(alias)
            elif is_last:
                self.battles.mark_delivered(alias)  # before the last write: the client votes after reading it
            if out or is_last:  # nothing written while a word is held: writes follow words, not tokens
                await self._send({"type": "http.response.body", "body": out, "more_body": not is_last})
        else:
            self._whole += body
            if is_last:
                whole = self._rewriter.whole(self._whole)
                self.battles.mark_delivered(alias)
                await self._start(200, battle_headers(self._headers, whole))
                await self._send({"type": "http.response.body", "body": whole, "more_body": False})

    async def fail(self) -> None:
        """Send the generic battle error in place of whatever failed, and void the battle."""
        assert self.answer.alias is not None
        self.battles.mark_failed(self.answer.alias)
        await self._start(GENERIC_STATUS, battle_headers([(b"content-type", b"application/json")], GENERIC_BODY))
        await self._send({"type": "http.response.body", "body": GENERIC_BODY, "more_body": False})

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.has_started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
