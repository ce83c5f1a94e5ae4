"""The <think> reasoning parser on recorded outputs, cut at every boundary."""

from __future__ import annotations

import pytest

from llmserve.reasoning import ReasoningDelta, reasoning_parser_class
from llmserve.reasoning.think import ThinkReasoningParser

QWEN_PROMPT = "<|im_start|>assistant\n"
R1_PROMPT = "<｜Assistant｜><think>\n"

CASES = [  # (prompt, output, reasoning, content)
    (QWEN_PROMPT, "<think>\nThe user greets. I greet back.\n</think>\n\nHello!", "\nThe user greets. I greet back.\n",
     "Hello!"),
    (QWEN_PROMPT, "<think>\n\n</think>\n\nNo thinking here.", "\n\n", "No thinking here."),
    (QWEN_PROMPT, "Plain answer, 1 < 2 and <thin is no tag.", "", "Plain answer, 1 < 2 and <thin is no tag."),
    (QWEN_PROMPT, "<think>cut off mid-thought <", "cut off mid-thought <", ""),
    (R1_PROMPT, "Let me think: 2+2=4.</think>The answer is 4. </think> stays.", "Let me think: 2+2=4.",
     "The answer is 4. </think> stays."),
    (QWEN_PROMPT, "<thi", "", "<thi"),
]


def _run(prompt: str, pieces: list[str]) -> tuple[str, str]:
    parser = ThinkReasoningParser(prompt)
    total = ReasoningDelta()
    for piece in [*pieces, None]:
        delta = parser.feed(piece) if piece is not None else parser.finish()
        total.reasoning += delta.reasoning
        total.content += delta.content
    return total.reasoning, total.content


@pytest.mark.parametrize(("prompt", "output", "reasoning", "content"), CASES)
def test_whole_and_cut_at_every_boundary(prompt: str, output: str, reasoning: str, content: str) -> None:
    assert _run(prompt, [output]) == (reasoning, content)
    assert _run(prompt, list(output)) == (reasoning, content)
    for cut in range(1, len(output)):
        assert _run(prompt, [output[:cut], output[cut:]]) == (reasoning, content)


def test_choice_by_name_or_template() -> None:
    assert reasoning_parser_class("think", "") is ThinkReasoningParser
    assert reasoning_parser_class("", "{% if x %}<think>\n\n</think>{% endif %}") is ThinkReasoningParser
    assert reasoning_parser_class("", "{{ messages }}") is None
