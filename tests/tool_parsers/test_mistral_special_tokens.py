"""Mistral's markers as special tokens: kept in the text by the detokenizer only when the request's
tool parser asks for them, then read back into tool calls token by token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast

from llmserve.api.answer import whole_answer
from llmserve.api.chat_features import ChatFeatures
from llmserve.api.tools import ToolPlan
from llmserve.engine.detokenizer import IncrementalDetokenizer
from llmserve.tool_parsers.hermes import HermesToolParser
from llmserve.tool_parsers.mistral import MistralToolParser

MARKERS = ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")
OUTPUTS = [  # (recorded answer, content, calls)
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}', "", [("get_weather", {"city": "Paris", "days": 3})]),
    ('On it. [TOOL_CALLS][{"name": "a", "arguments": {"x": "é"}}, {"name": "b", "arguments": {}}]', "On it.",
     [("a", {"x": "é"}), ("b", {})]),
    ('[TOOL_CALLS]f[CALL_ID]Ab3dE6gH9[ARGS]{"q": [1]}[TOOL_CALLS]g[ARGS]{}', "", [("f", {"q": [1]}), ("g", {})]),
]


@pytest.fixture(scope="module")
def mistral_tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerFast:
    """The tiny BPE with Mistral's markers added as special tokens, as Mistral's tokenizers have them."""
    backend = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    backend.add_special_tokens([AddedToken(m, special=True, normalized=False) for m in MARKERS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", clean_up_tokenization_spaces=False)


def _features(parser: type) -> ChatFeatures:
    return ChatFeatures(None, ToolPlan([], parser, None, True), None, {})


def _stream(tokenizer: PreTrainedTokenizerFast, features: ChatFeatures, ids: list[int], group: int):
    """The answer's ids decoded as the engine does, the text deltas sent `group` tokens at a time."""
    detok = IncrementalDetokenizer(tokenizer, [tokenizer.bos_token_id], (), features.special_text_ids(tokenizer))
    splitter = features.splitter()
    content, calls = "", {}
    for start in range(0, len(ids), group):
        for token_id in ids[start:start + group]:
            detok.push(token_id)
        last = start + group >= len(ids)
        delta = splitter.feed(detok.release(is_final=last))
        if last:
            end = splitter.finish()
            delta.content += end.content
            delta.tool_calls += end.tool_calls
        content += delta.content
        for part in delta.tool_calls:
            call = calls.setdefault(part.index, {"name": part.name, "arguments": ""})
            call["arguments"] += part.arguments
    return content, [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())]


@pytest.mark.parametrize(("text", "content", "expected"), OUTPUTS)
def test_special_markers_reach_the_parser(mistral_tokenizer, text: str, content: str, expected: list) -> None:
    ids = mistral_tokenizer.encode(text, add_special_tokens=False)
    special = {i for i, t in mistral_tokenizer.added_tokens_decoder.items() if t.special and str(t) in MARKERS}
    assert sum(i in special for i in ids) == text.count("[TOOL_CALLS]") + text.count("[ARGS]") + text.count("[CALL_ID]")
    assert MARKERS[0] not in mistral_tokenizer.decode(ids, skip_special_tokens=True)
    features = _features(MistralToolParser)
    assert len(features.special_text_ids(mistral_tokenizer)) == 3
    for group in range(1, len(ids) + 1):
        assert _stream(mistral_tokenizer, features, ids, group) == (content, expected)


def test_other_parsers_keep_dropping_special_tokens(mistral_tokenizer) -> None:
    """Only a parser that names the markers gets them: others see the usual text."""
    features = _features(HermesToolParser)
    assert features.special_text_ids(mistral_tokenizer) == ()
    ids = mistral_tokenizer.encode(OUTPUTS[0][0], add_special_tokens=False)
    content, calls = _stream(mistral_tokenizer, features, ids, 1)
    assert calls == [] and content == mistral_tokenizer.decode(ids, skip_special_tokens=True)
    assert "[TOOL_CALLS]" not in content


def test_whole_answer_matches_stream(mistral_tokenizer) -> None:
    text, content, expected = OUTPUTS[1]
    reasoning, got, calls = whole_answer(_features(MistralToolParser).splitter(), text)
    assert reasoning is None and got == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == expected
