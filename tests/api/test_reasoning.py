"""reasoning_content through the SDK: a worker with reasoning_parser = "think", the tiny model's
answer forced into `<think>...</think>answer` by a regex (random weights would never write it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from llmserve.config import parse_config

from .conftest import live_server

MODEL = "tiny-thinker"
SHAPE = {"structured_outputs": {"regex": r"<think>[a-z ]{3,30}</think>\n\n[a-z]{2,12}"}}
MESSAGES = [{"role": "user", "content": "Think first."}]


@pytest.fixture(scope="module")
def client(tiny_model_dir) -> Iterator[OpenAI]:
    config = parse_config({"server": {}, "workers": [{
        "model_path": str(tiny_model_dir), "model_names": [MODEL], "dtype": "float32", "kv_cache_tokens": 4096,
        "reasoning_parser": "think"}]})
    with live_server(config) as url:
        yield OpenAI(base_url=url, api_key="unused", max_retries=0)


def test_reasoning_content_is_split_from_content_stream_and_not(client: OpenAI) -> None:
    for seed in range(4):
        args = {"model": MODEL, "messages": MESSAGES, "temperature": 1.0, "seed": seed, "max_tokens": 80,
                "extra_body": SHAPE}
        whole = client.chat.completions.create(**args).choices[0]
        reasoning = whole.message.model_extra["reasoning_content"]
        assert whole.finish_reason == "stop"
        assert reasoning and "<think>" not in reasoning and "</think>" not in whole.message.content
        assert whole.message.content.isalpha()
        streamed_reasoning, streamed_content = "", ""
        for chunk in client.chat.completions.create(stream=True, **args):
            for choice in chunk.choices:
                streamed_reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
                streamed_content += choice.delta.content or ""
        assert (streamed_reasoning, streamed_content) == (reasoning, whole.message.content)


def test_responses_api_gives_a_reasoning_item(client: OpenAI) -> None:
    out = client.responses.create(model=MODEL, input="Think first.", temperature=1.0, max_output_tokens=80,
                                  extra_body={"seed": 1, **SHAPE})
    assert [item.type for item in out.output] == ["reasoning", "message"]
    assert out.output[0].content[0].text and out.output_text.isalpha()
