"""gpt-oss harmony answers on recorded outputs, cut at every boundary: the tool parser alone, the
reasoning parser alone and both together (as a chat request with tools runs them)."""

from __future__ import annotations

import json

import pytest

from llmserve.api.answer import AnswerSplitter
from llmserve.reasoning import reasoning_parser_class
from llmserve.reasoning.harmony import HarmonyReasoningParser
from llmserve.tool_parsers import tool_parser_class
from llmserve.tool_parsers.harmony import HarmonyToolParser

PROMPT_TAIL = "<|start|>assistant"
ANALYSIS = "<|channel|>analysis<|message|>User asks for the weather in SF; call get_weather.<|end|>"
CASES = [  # (recorded answer, reasoning, content, [(name, arguments)])
    (ANALYSIS + '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>'
     '{"location":"San Francisco, CA","unit":"c"}<|call|>', "User asks for the weather in SF; call get_weather.", "",
     [("get_weather", {"location": "San Francisco, CA", "unit": "c"})]),
    ("<|channel|>analysis<|message|>Greet back.<|end|><|start|>assistant<|channel|>final<|message|>Hello! Ça va? "
     "1 < 2 <|x|>.<|return|>", "Greet back.", "Hello! Ça va? 1 < 2 <|x|>.", []),
    ("<|channel|>analysis<|message|>Short.<|end|><|start|>assistant<|channel|>final<|message|>Stopped by the engine",
     "Short.", "Stopped by the engine", []),
    ("<|channel|>commentary<|message|>Checking both.<|end|><|start|>assistant<|channel|>commentary to=functions.a "
     '<|constrain|>json<|message|>{}<|call|><|start|>assistant<|channel|>commentary to=functions.b<|message|>'
     '{"x": [1, "é"]}<|call|>', "", "Checking both.", [("a", {}), ("b", {"x": [1, "é"]})]),
    ('{"answer": 4}', "", '{"answer": 4}', []),  # a grammar-forced answer: no channels
    ("<|channel|>analysis<|message|>x<|end|><|start|>assistant to=functions.lookup<|channel|>commentary json"
     '<|message|>{"id": 7}<|call|>', "x", "", [("lookup", {"id": 7})]),  # the recipient before the channel
]


def _run(parsers: tuple[bool, bool], pieces: list[str]) -> tuple[str, str, list]:
    splitter = AnswerSplitter(HarmonyReasoningParser if parsers[0] else None, HarmonyToolParser if parsers[1] else None,
                              PROMPT_TAIL)
    reasoning, content, calls = "", "", {}
    for delta in [*(splitter.feed(p) for p in pieces), splitter.finish()]:
        reasoning += delta.reasoning
        content += delta.content
        for part in delta.tool_calls:
            if part.index not in calls:
                assert part.id and part.name
                calls[part.index] = (part.name, "")
            calls[part.index] = (calls[part.index][0], calls[part.index][1] + part.arguments)
    assert sorted(calls) == list(range(len(calls)))
    return reasoning, content, [(name, json.loads(args)) for name, args in (calls[i] for i in sorted(calls))]


@pytest.mark.parametrize(("text", "reasoning", "content", "calls"), CASES)
def test_cut_at_every_boundary(harmony_vocab, text: str, reasoning: str, content: str, calls: list) -> None:
    expected = {(True, True): (reasoning, content, calls),  # a chat request with tools
                (False, True): ("", content, calls)}  # tool parser alone: the analysis is not content
    for parsers, want in expected.items():
        assert _run(parsers, [text]) == want
        assert _run(parsers, list(text)) == want
        for cut in range(1, len(text)):
            assert _run(parsers, [text[:cut], text[cut:]]) == want


@pytest.mark.parametrize(("text", "reasoning", "content", "calls"), CASES)
def test_reasoning_alone_passes_calls_on(harmony_vocab, text: str, reasoning: str, content: str, calls: list) -> None:
    """Without tools in the request only the reasoning parser runs: a call stays harmony text."""
    got_reasoning, got_content, _ = _run((True, False), [text])
    assert got_reasoning == reasoning
    assert got_content.startswith(content)
    assert (got_content != content) == bool(calls)
    for cut in range(1, len(text)):
        assert _run((True, False), [text[:cut], text[cut:]])[:2] == (got_reasoning, got_content)


def test_arguments_stream_as_they_arrive(harmony_vocab) -> None:
    parser = HarmonyToolParser()
    first = parser.feed(CASES[0][0][: CASES[0][0].index('"unit"')])
    assert first.tool_calls[0].name == "get_weather" and first.tool_calls[0].id.startswith("call_")
    assert "".join(d.arguments for d in first.tool_calls).startswith('{"location":"San Francisco')


def test_choice_from_gpt_oss_template() -> None:
    template = "{{- '<|start|>assistant<|channel|>final<|message|>' }}"
    assert tool_parser_class("", template) is HarmonyToolParser
    assert reasoning_parser_class("", template) is HarmonyReasoningParser


def test_forced_format_is_read_back(harmony_vocab) -> None:
    fmt = HarmonyToolParser.forced_format([], True)
    assert fmt["separator"] == "<|start|>assistant"
    tag = HarmonyToolParser.forced_format([__import__("llmserve.tool_parsers", fromlist=["FunctionTool"]).FunctionTool(
        "f")], False)["tags"][0]
    assert _run((True, True), [tag["begin"] + '{"k": 1}' + tag["end"]]) == ("", "", [("f", {"k": 1})])


def test_start_up_refusal_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose parsers are harmony, named or chosen from its template, is refused at start-up
    when openai-harmony is missing; other workers never load it."""
    from llmserve.errors import ConfigError
    from llmserve.tool_parsers.harmony_messages import check_harmony, harmony_encoding

    harmony_encoding.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, "openai_harmony", None)  # import fails as if not installed
    try:
        check_harmony("hermes", "think", "<|channel|>", "workers[0]")  # both named: the template does not matter
        for named, template in ((("harmony", ""), ""), (("", ""), "{{ '<|channel|>final' }}")):
            with pytest.raises(ConfigError, match=r"workers\[0\]: .*'openai-harmony' package"):
                check_harmony(*named, template, "workers[0]")
    finally:
        harmony_encoding.cache_clear()
