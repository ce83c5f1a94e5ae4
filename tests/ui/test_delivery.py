"""Battle answers on their way out: rewritten to what every model shares, errors made generic, a side
marked delivered only when a 200 answer for its alias went out in full, its battle void when it failed."""

from __future__ import annotations

import asyncio
import json

import pytest

from llmserve.ui.anonymity import GENERIC_BODY, GENERIC_ERROR, MAX_HELD_CHARS, BattleAnswer
from llmserve.ui.battles import BattleStore
from llmserve.ui.delivery import BattleDeliveryMiddleware

CHUNK_KEYS = {"id", "object", "created", "model", "system_fingerprint", "choices"}


def _chat_app(store: BattleStore, alias: str, status: int, bodies: list[bytes], *, finishes: bool = True,
              stream: bool = True, headers: list[tuple[bytes, bytes]] | None = None):
    """A stand-in for the chat route: reads the body, resolves the model as the API does, then answers."""
    content_type = b"text/event-stream; charset=utf-8" if stream and status == 200 else b"application/json"

    async def app(scope, receive, send) -> None:
        await receive()
        resolved = store.resolve_alias(alias)  # None off the chat route: other routes do not know aliases
        assert (resolved is not None) == (alias.startswith("battle-") and scope["path"] == "/v1/chat/completions")
        start_headers = [(b"content-type", content_type), *(headers or [])]
        await send({"type": "http.response.start", "status": status, "headers": start_headers})
        for body in bodies:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        if finishes:  # a client that left never gets the last message
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def _call(store: BattleStore, app, alias: str, path: str = "/v1/chat/completions") -> list[dict]:
    sent: list[dict] = []
    request = json.dumps({"model": alias, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})

    async def receive() -> dict:
        return {"type": "http.request", "body": request.encode(), "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    asyncio.run(BattleDeliveryMiddleware(app, store)(scope, receive, send))
    return sent


def _events(sent: list[dict]) -> list[str]:
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    return [line[6:] for line in body.split("\n") if line.startswith("data: ")]


def test_only_a_whole_successful_answer_marks_its_side_and_a_failure_voids_the_battle() -> None:
    store = BattleStore()
    battle = store.create(["a", "b"])
    left = battle.alias("left")
    chunk = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"Hi "},"finish_reason":null}]}\n\n'
    error_event = b'data: {"error":{"message":"the model step failed","type":"internal_error"}}\n\n'
    _call(store, _chat_app(store, left, 200, [chunk]), left, path="/v1/completions")  # not the chat route
    assert battle.requested == set() and battle.delivered == set()
    sent = _call(store, _chat_app(store, left, 200, [chunk]), left)
    assert battle.delivered == {"left"} and not battle.is_answered and not battle.is_failed
    [event] = [json.loads(e) for e in _events(sent)]
    assert event == {"id": event["id"], "object": "chat.completion.chunk", "created": event["created"], "model": left,
                     "system_fingerprint": None, "choices": [{"index": 0, "delta": {"content": "Hi "},
                                                              "logprobs": None, "finish_reason": None}]}
    _call(store, _chat_app(store, "tiny-a", 200, [b"{}"], stream=False), "tiny-a")  # a named request marks nothing
    assert battle.delivered == {"left"}

    right = battle.alias("right")
    for status, bodies, finishes in [(200, [chunk, error_event, b"data: [DONE]\n\n"], True),  # failed mid-stream
                                     (200, [chunk], False)]:  # the client left
        fresh = store.create(["a", "b"])
        _call(store, _chat_app(store, fresh.alias("right"), status, bodies, finishes=finishes), fresh.alias("right"))
        assert fresh.delivered == set() and fresh.is_failed == finishes
    sent = _call(store, _chat_app(store, right, 503, [b'{"error":{"message":"no worker serving b"}}'],
                                  headers=[(b"retry-after", b"5")]), right)
    assert battle.is_failed and battle.delivered == {"left"}
    assert sent[0] == {"type": "http.response.start", "status": 400, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(GENERIC_BODY)).encode())]}
    assert b"".join(m.get("body", b"") for m in sent[1:]) == GENERIC_BODY
    assert store.answering.get() is None  # the request's record does not outlive it


def test_an_exception_before_the_answer_started_is_the_generic_error() -> None:
    store = BattleStore()
    battle = store.create(["a", "b"])
    alias = battle.alias("left")

    async def app(scope, receive, send) -> None:
        await receive()
        store.resolve_alias(alias)
        raise RuntimeError("tensor shape mismatch in worker-0 for model a")

    sent = _call(store, app, alias)
    assert [m.get("status") for m in sent] == [400, None] and sent[1]["body"] == GENERIC_BODY
    assert battle.is_failed


def _stream_of(pieces: list[str], finish: str = "length") -> list[bytes]:
    """What the chat route streams for one choice: role, a chunk per token (with the fields a reasoning
    model, logprobs and usage add), the finish chunk, a usage chunk, a ping and [DONE]."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "system_fingerprint": "fp_worker_0", "usage": None}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
              {**head, "choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]}]
    events += [{**head, "choices": [{"index": 0, "delta": {"content": p}, "logprobs": {"content": [
        {"token": p, "bytes": list(p.encode())}]}, "finish_reason": None}]} for p in pieces]
    events += [{**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
               {**head, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(pieces)}}]
    out = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    return [*out[:3], b": ping - 2026-12-03 12:00:00.1+00:00\n\n", *out[3:], b"data: [DONE]\n\n"]


@pytest.mark.parametrize("pieces", [
    ["The", " whale", " is", " big", "ger", ".", " A", " mouse", " is", " small", "."],
    ["The whale", " is bigger.", " A mo", "use is sm", "all."],
    ["T", "he whale is bigger.", " A mouse is small", "."],
    ["x" * 40, "y" * 30, " z"],
])
def test_a_stream_is_re_cut_so_that_its_chunks_depend_on_the_text_alone(pieces: list[str]) -> None:
    rewriter = BattleAnswer("battle-0-left")
    messages = _stream_of(pieces)
    # Split the bytes at arbitrary places too: events may straddle body messages.
    raw = b"".join(messages)
    out = b"".join(rewriter.stream(raw[i:i + 37], i + 37 >= len(raw)) for i in range(0, len(raw), 37))
    events = [line[6:] for line in out.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and out.count(b": ping\n\n") == 1 and b"2026" not in out
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(set(c) == CHUNK_KEYS and c["model"] == "battle-0-left" and c["system_fingerprint"] is None
               for c in chunks)
    assert len({(c["id"], c["created"]) for c in chunks}) == 1 and chunks[0]["id"] != "chatcmpl-1"
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""} and deltas[-1] == {}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert all(c["choices"][0]["logprobs"] is None and set(c["choices"][0]) == {
        "index", "delta", "logprobs", "finish_reason"} for c in chunks)
    texts = [d["content"] for d in deltas[1:-1]]
    assert "".join(texts) == "".join(pieces)
    assert all(t[-1].isspace() or len(t) == MAX_HELD_CHARS for t in texts[:-1])  # cut at a space, else a full run
    if pieces[0] == "x" * 40:
        assert texts == ["x" * 32, "x" * 8 + "y" * 24, "y" * 6 + " ", "z"]


def test_the_cuts_are_a_function_of_the_text_and_of_no_tokenization() -> None:
    text = "The whale is bigger. A mouse is small, and a flea is smaller still!"

    def cuts(pieces: list[str]) -> list[str]:
        out = BattleAnswer("a").stream(b"".join(_stream_of(pieces)), True)
        deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in out.decode().split("\n")
                  if line.startswith("data: {")]
        return [d["content"] for d in deltas if d.get("content")]

    per_char = cuts(list(text))
    assert per_char == [word + " " for word in text.split(" ")[:-1]] + ["still!"]
    for size in (2, 3, 5, 7, 11):
        assert cuts([text[i:i + size] for i in range(0, len(text), size)]) == per_char


def test_an_error_event_becomes_the_generic_error_and_nothing_follows_but_done() -> None:
    rewriter = BattleAnswer("battle-0-right")
    raw = (b'data: {"choices":[{"index":0,"delta":{"content":"Hello wor"}}]}\n\n'
           b'data: {"error":{"message":"This model\'s maximum context length is 64 tokens","type":"x"}}\n\n'
           b'data: [DONE]\n\n')
    out = rewriter.stream(raw, True)
    assert rewriter.is_failed
    assert [line[6:] for line in out.decode().split("\n") if line.startswith("data: ")][-2:] == [
        json.dumps(GENERIC_ERROR, separators=(",", ":")), "[DONE]"]
    assert b"64" not in out and b"wor" not in out


def test_a_whole_answer_keeps_its_content_and_finish_reason_only() -> None:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "battle-0-left",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there", "tool_calls": None,
                                                 "reasoning_content": "thinking"},
                         "logprobs": {"content": []}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            "system_fingerprint": "fp"}
    out = json.loads(BattleAnswer("battle-0-left").whole(json.dumps(body).encode()))
    assert out == {"id": out["id"], "object": "chat.completion", "created": out["created"], "model": "battle-0-left",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                                "logprobs": None, "finish_reason": "stop"}], "system_fingerprint": None}
    assert out["id"] != "chatcmpl-1"
