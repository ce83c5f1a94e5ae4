"""Tool calling through the official SDK against the live app, on the tiny model (its chat
template renders tools Hermes-style; forced calls come from the structured-output grammar)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from llmserve.config import parse_config

from .conftest import live_server

MODEL = "tiny-llama"
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}}}
SEARCH = {"type": "object", "required": ["query", "limit"], "additionalProperties": False,
          "properties": {"query": {"type": "string", "maxLength": 16},
                         "limit": {"type": "integer", "minimum": 1, "maximum": 9}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "search", "description": "Search the web", "parameters": SEARCH}}]
SCHEMAS = {"get_weather": WEATHER, "search": SEARCH}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def _check_calls(calls, names=("get_weather", "search")) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_tool_choice_always_calls_a_tool_with_valid_arguments(client: OpenAI) -> None:
    for seed in range(6):
        out = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                             temperature=1.0, seed=seed, max_tokens=200)
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        _check_calls(choice.message.tool_calls)


def test_named_function_and_parallel_false_give_one_call_of_it(client: OpenAI) -> None:
    named = {"type": "function", "function": {"name": "search"}}
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=named,
                                         temperature=1.0, seed=4, max_tokens=200)
    calls = out.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "search"
    _check_calls(calls, ("search",))
    single = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                            parallel_tool_calls=False, temperature=1.0, seed=2, max_tokens=200)
    assert len(single.choices[0].message.tool_calls) == 1


def test_streamed_tool_calls_equal_the_whole_answer(client: OpenAI) -> None:
    args = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "tool_choice": "required", "temperature": 1.0,
            "seed": 9, "max_tokens": 200}
    whole = client.chat.completions.create(**args).choices[0]
    calls: dict[int, dict] = {}
    finishes = []
    num_argument_chunks = 0
    for chunk in client.chat.completions.create(stream=True, **args):
        for choice in chunk.choices:
            assert not choice.delta.content
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
            for part in choice.delta.tool_calls or []:
                if part.id:
                    calls[part.index] = {"name": part.function.name, "arguments": part.function.arguments or ""}
                else:
                    calls[part.index]["arguments"] += part.function.arguments
                    num_argument_chunks += 1
    assert finishes == ["tool_calls"]
    assert [(c.function.name, c.function.arguments) for c in whole.message.tool_calls] == \
        [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
    assert num_argument_chunks > 1  # the arguments grew over several chunks


def test_two_turn_tool_loop_keeps_the_history(client: OpenAI, tiny_model_dir) -> None:
    first = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                           temperature=1.0, seed=1, max_tokens=200)
    message = first.choices[0].message
    call = message.tool_calls[0]
    history = [*MESSAGES, message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}]
    second = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=5, temperature=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected_prompt = tokenizer.apply_chat_template(
        [*MESSAGES, {"role": "assistant", "content": "", "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.function.name,
                                                          "arguments": json.loads(c.function.arguments)}}
            for c in message.tool_calls]},
         {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"}],
        tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert "18 degrees, sunny" in expected_prompt and call.function.name in expected_prompt
    assert second.usage.prompt_tokens == len(tokenizer.encode(expected_prompt, add_special_tokens=False))
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 10


def test_tools_reach_the_template_and_none_hides_them(client: OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    auto = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=1)
    hidden = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                            max_tokens=1)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens + 50
    assert hidden.usage.prompt_tokens == plain.usage.prompt_tokens


@pytest.mark.parametrize(("extra", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"type": "function",
                                                         "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages.0.tool_calls.0.id"),
    ({"chat_template_kwargs": {"tools": []}}, "chat_template_kwargs"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_bad_tool_requests_are_400s(base_url: str, extra: dict, param: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, **extra}
    response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_a_template_without_tools_refuses_them(tiny_model_dir) -> None:
    config = parse_config({"server": {}, "workers": [{
        "model_path": str(tiny_model_dir), "model_names": [MODEL], "dtype": "float32", "kv_cache_tokens": 4096,
        "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"}]})
    with live_server(config) as url:
        response = httpx.post(f"{url}/chat/completions", json={"model": MODEL, "messages": MESSAGES, "tools": TOOLS},
                              timeout=30)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "tools"
