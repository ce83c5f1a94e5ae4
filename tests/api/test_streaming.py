"""SSE chunk encoding: the templated text chunk is byte-for-byte the encoded chunk object."""

from __future__ import annotations

import json

import pytest

from llmserve.api.streaming import ChunkFormat, sse_event


@pytest.mark.parametrize("text_field", ["text", "delta.content"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_text_chunk_equals_the_encoded_object(text_field: str, include_usage: bool) -> None:
    chunk = ChunkFormat("cmpl-1", "text_completion", 'my "model" é', include_usage, text_field)
    for index, text in [(0, "hi"), (3, 'quote " backslash \\ newline \n'), (1, "\u2028 🙂 \x00"), (2, "data: x\n\n")]:
        new_text = {"text": text} if text_field == "text" else {"delta": {"content": text}}
        choice = {"index": index, **new_text, "logprobs": None, "finish_reason": None}
        assert chunk.text(index, text) == chunk([choice])
        logprobs = {"content": [{"token": text, "logprob": -0.5, "bytes": [1, 2], "top_logprobs": []}], "refusal": None}
        assert chunk.text(index, text, logprobs) == chunk([{**choice, "logprobs": logprobs}])
        event = chunk.text(index, text)
        assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n") == 2
        parsed = json.loads(event[len(b"data: "):])
        assert parsed["model"] == 'my "model" é' and ("usage" in parsed) == include_usage


def test_sse_event_is_one_compact_line() -> None:
    assert sse_event({"a": "é\n", "b": None}) == 'data: {"a":"é\\n","b":null}\n\n'.encode()


@pytest.mark.parametrize("text", ["a\x85b", "line\u2028sep", "para\u2029sep", "all\x85\u2028\u2029\x0b\x1c\n"])
def test_chunks_hold_no_character_that_line_readers_break_at(text: str) -> None:
    """A random model can emit U+0085, U+2028 or U+2029; JSON leaves them raw, and a client reading the
    stream with str.splitlines() semantics (httpx's aiter_lines) cut such a chunk in two. They are
    escaped (the same JSON value), so each event is one line whatever the text."""
    fmt = ChunkFormat("chatcmpl-1", "chat.completion.chunk", "m", False, "delta.content")
    for event in (fmt.text(0, text), sse_event({"choices": [{"text": text}]})):
        lines = event.decode().splitlines()
        assert len(lines) == 2 and lines[1] == "", lines
        parsed = json.loads(lines[0].removeprefix("data: "))
        assert text in (parsed["choices"][0].get("text"), parsed["choices"][0].get("delta", {}).get("content"))
