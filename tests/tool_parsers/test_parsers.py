"""Tool-call parsers on recorded outputs of each format, streamed with the text cut at every boundary."""

from __future__ import annotations

import json

import pytest

from llmserve.tool_parsers import TOOL_PARSERS, ParseDelta, collect, tool_parser_class
from llmserve.tool_parsers.hermes import HermesToolParser
from llmserve.tool_parsers.llama3_json import Llama3JsonToolParser

WEATHER = '{"city": "Paris", "units": ["c", "f"], "note": "a \\"quoted\\" }{ ]["}'

# (parser, model output, content, [(name, arguments as a dict)])
CASES = [
    ("hermes", f'<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>', "",
     [("get_weather", json.loads(WEATHER))]),
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
               '<tool_call>\n{"name": "b", "arguments": {"x": [1, {"y": null}]}}\n</tool_call>', "Let me check.",
     [("a", {}), ("b", {"x": [1, {"y": None}]})]),
    ("hermes", '<tool_call>{"arguments": {"q": 1}, "name": "late_name"}</tool_call>', "", [("late_name", {"q": 1})]),
    ("hermes", '<tool_call>{"name": "s", "arguments": "{\\"k\\": 2}"}</tool_call>', "", [("s", {"k": 2})]),
    ("hermes", "No tools needed: 1 < 2 and <tool is a word.", "No tools needed: 1 < 2 and <tool is a word.", []),
    ("hermes", "<tool_call>not json</tool_call> tail", "<tool_call>not json</tool_call> tail", []),
    ("hermes", 'Thinking <tool_c', "Thinking <tool_c", []),
    ("llama3_json", '{"name": "get_weather", "parameters": ' + WEATHER + "}", "",
     [("get_weather", json.loads(WEATHER))]),
    ("llama3_json", '<|python_tag|>{"name": "a", "parameters": {"n": 1}}; {"name": "b", "parameters": {}}', "",
     [("a", {"n": 1}), ("b", {})]),
    ("llama3_json", "The capital of France is Paris {not a call}.", "The capital of France is Paris {not a call}.",
     []),
    # Mistral v3 (Mistral-7B-Instruct-v0.3, Mixtral): a JSON array after the marker
    ("mistral", f'[TOOL_CALLS] [{{"name": "get_weather", "arguments": {WEATHER}}}]', "",
     [("get_weather", json.loads(WEATHER))]),
    ("mistral", 'Checking both.[TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": [1]}}]',
     "Checking both.", [("a", {}), ("b", {"x": [1]})]),
    ("mistral", '[TOOL_CALLS] {"name": "solo", "arguments": {"k": "v"}}', "", [("solo", {"k": "v"})]),
    # Mistral v11+ (Mistral Small 3.2, Magistral, Devstral): name[ARGS]arguments per marker
    ("mistral", f"[TOOL_CALLS]get_weather[ARGS]{WEATHER}", "", [("get_weather", json.loads(WEATHER))]),
    ("mistral", 'Sure.\n\n[TOOL_CALLS]a[ARGS]{}[TOOL_CALLS]b.c-d[ARGS]{"n": {"m": [1, 2]}}', "Sure.",
     [("a", {}), ("b.c-d", {"n": {"m": [1, 2]}})]),
    ("mistral", '[TOOL_CALLS]f[CALL_ID]abc123XYZ[ARGS]{"q": 1}', "", [("f", {"q": 1})]),
    ("mistral", "Arrays [1, 2] and [TOOL_ are text.", "Arrays [1, 2] and [TOOL_ are text.", []),
    ("mistral", "[TOOL_CALLS] not a name here", "[TOOL_CALLS] not a name here", []),
    ("mistral", "[TOOL_CALLS] [1, 2]", "[TOOL_CALLS] [1, 2]", []),
    ("mistral", '[TOOL_CALLS][{"no": "name"}] tail', '[TOOL_CALLS][{"no": "name"}] tail', []),
]


def _run(parser_name: str, pieces: list[str]) -> tuple[str, list[dict]]:
    parser = TOOL_PARSERS[parser_name]()
    total = ParseDelta()
    for piece in pieces:
        total.extend(parser.feed(piece))
    total.extend(parser.finish())
    calls: dict[int, dict] = {}
    for part in total.tool_calls:
        if part.index not in calls:
            assert part.id and part.name, "a call's first part carries its id and name"
            calls[part.index] = {"id": part.id, "name": part.name, "arguments": ""}
        else:
            assert part.id is None and part.name is None
        calls[part.index]["arguments"] += part.arguments
    assert sorted(calls) == list(range(len(calls)))
    return total.content, [calls[i] for i in sorted(calls)]


def _check(result: tuple[str, list[dict]], content: str, expected: list) -> None:
    got_content, calls = result
    assert got_content == content
    assert [(c["name"], json.loads(c["arguments"]) if not isinstance(json.loads(c["arguments"]), str)
             else json.loads(json.loads(c["arguments"]))) for c in calls] == expected


@pytest.mark.parametrize(("parser_name", "text", "content", "expected"), CASES)
def test_whole_and_cut_at_every_boundary(parser_name: str, text: str, content: str, expected: list) -> None:
    whole = _run(parser_name, [text])
    _check(whole, content, expected)
    _check(_run(parser_name, list(text)), content, expected)  # one character at a time
    for cut in range(1, len(text)):
        _check(_run(parser_name, [text[:cut], text[cut:]]), content, expected)
    for cut in range(1, len(text) - 3, 3):
        _check(_run(parser_name, [text[:cut], text[cut:cut + 3], "", text[cut + 3:]]), content, expected)


def test_arguments_stream_as_they_arrive() -> None:
    """The arguments are sent in pieces before the call closes, not all at the end."""
    parser = HermesToolParser()
    text = f'<tool_call>{{"name": "get_weather", "arguments": {WEATHER}}}</tool_call>'
    cut = text.index("units")
    first = parser.feed(text[:cut])
    assert first.tool_calls[0].name == "get_weather"
    assert "".join(d.arguments for d in first.tool_calls) == '{"city": "Paris", "'


def test_collect_gives_openai_objects() -> None:
    content, calls = collect(Llama3JsonToolParser(), '{"name": "f", "parameters": {"a": 1}}')
    assert content == "" and calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "f", "arguments": '{"a": 1}'}


def test_mistral_arguments_stream_and_call_id_kept() -> None:
    parser = TOOL_PARSERS["mistral"]()
    first = parser.feed('[TOOL_CALLS]f[CALL_ID]abc123XYZ[ARGS]{"q": [1, ')
    assert (first.tool_calls[0].id, first.tool_calls[0].name) == ("abc123XYZ", "f")
    assert "".join(d.arguments for d in first.tool_calls) == '{"q": [1, '
    assert "".join(d.arguments for d in parser.feed('2]}').tool_calls) == "2]}"


def test_choice_by_name_or_template() -> None:
    assert tool_parser_class("llama3_json", "") is Llama3JsonToolParser
    assert tool_parser_class("", "... <tool_call> ...") is HermesToolParser
    assert tool_parser_class("", "{{ messages }}") is None
    assert tool_parser_class("", "{{- '[TOOL_CALLS]' + calls }}") is TOOL_PARSERS["mistral"]
