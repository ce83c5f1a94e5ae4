"""Which battle answers reached their client: a pure ASGI middleware around the chat route.

A battle takes a vote only once both of its answers were generated and delivered (see
`battles.py`). The API resolves a battle alias deep inside the chat handler, through
`BattleStore.resolve_alias`; this middleware gives each chat request an `Answer` record in the
store's context variable, so resolving the alias tells it which battle side the request answers
without the API knowing about battles. It then watches the response go out: a 200 whose last body
message is sent, with no error event in it, marks that side delivered. An error status, an error
event mid-stream (the stream still ends with `[DONE]`) or a client that leaves before the end (the
last message is never sent) marks nothing.

For a request that names no battle the watch is one attribute check per message.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmserve.ui.battles import Answer, BattleStore

CHAT_PATH = "/v1/chat/completions"
# How `api/streaming.py` frames an error event (`sse_event(render_error(...))`).
_ERROR_EVENT = b'data: {"error":'


class BattleDeliveryMiddleware:
    """Marks a battle side delivered once a chat completion for its alias was answered in full."""

    def __init__(self, app: ASGIApp, battles: BattleStore) -> None:
        self.app = app
        self.battles = battles

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != CHAT_PATH:
            await self.app(scope, receive, send)
            return
        answer = Answer()
        token = self.battles.answering.set(answer)
        try:
            await self.app(scope, receive, self._watch(answer, send))
        finally:
            self.battles.answering.reset(token)

    def _watch(self, answer: Answer, send: Send) -> Send:
        is_ok = True

        async def watched(message: Message) -> None:
            nonlocal is_ok
            if answer.alias is not None:
                if message["type"] == "http.response.start":
                    is_ok = message["status"] == 200
                elif message["type"] == "http.response.body":
                    is_ok = is_ok and not message.get("body", b"").startswith(_ERROR_EVENT)
                    if is_ok and not message.get("more_body", False):
                        # Marked before the last write: the client can only vote after reading it.
                        self.battles.mark_delivered(answer.alias)
            await send(message)

        return watched
