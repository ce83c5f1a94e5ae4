"""POST /v1/responses through the official SDK: text, function tools, JSON-schema text format, streams."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

MODEL = "tiny-llama"
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city"],
           "properties": {"city": {"type": "string", "maxLength": 12}}}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER,
          "strict": True}]


class Answer(BaseModel):
    verdict: bool
    score: int = Field(ge=0, le=10)


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def test_text_response_and_usage(client: OpenAI) -> None:
    out = client.responses.create(model=MODEL, input="Hello", instructions="Be brief.", max_output_tokens=8,
                                  temperature=0)
    assert out.object == "response" and out.id.startswith("resp_")
    assert out.status == "incomplete" and out.incomplete_details.reason == "max_output_tokens"
    assert out.output[0].type == "message" and out.output_text == out.output[0].content[0].text
    assert out.usage.output_tokens == 8 and out.usage.total_tokens == out.usage.input_tokens + 8
    chat = client.chat.completions.create(model=MODEL, max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    assert out.output_text == chat.choices[0].message.content
    assert out.usage.input_tokens == chat.usage.prompt_tokens


def test_streamed_text_equals_the_whole_answer(client: OpenAI) -> None:
    args = {"model": MODEL, "input": [{"role": "user", "content": "Tell me"}], "max_output_tokens": 20,
            "temperature": 0}
    whole = client.responses.create(**args)
    with client.responses.stream(**args) as stream:
        events = list(stream)
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    # Cut by max_output_tokens: the stream ends with response.incomplete (as OpenAI's does).
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text == whole.output_text
    assert "".join(deltas) == whole.output_text


def test_function_tool_required_stream_and_not(client: OpenAI) -> None:
    args = {"model": MODEL, "input": "Weather in Paris?", "tools": TOOLS, "tool_choice": "required",
            "temperature": 1.0, "max_output_tokens": 100, "extra_body": {"seed": 3}}
    whole = client.responses.create(**args)
    calls = [item for item in whole.output if item.type == "function_call"]
    assert calls and whole.status == "completed"
    for call in calls:
        assert call.name == "get_weather" and call.call_id.startswith("call_")
        jsonschema.validate(json.loads(call.arguments), WEATHER)
    with client.responses.stream(**args) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    assert [(c.name, c.arguments) for c in final.output if c.type == "function_call"] == \
        [(c.name, c.arguments) for c in calls]


def test_tool_loop_with_function_call_output(client: OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="Weather?", tools=TOOLS,
                                    tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=100)
    call = next(item for item in first.output if item.type == "function_call")
    second = client.responses.create(model=MODEL, tools=TOOLS, max_output_tokens=3, input=[
        {"role": "user", "content": "Weather?"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.usage.input_tokens > first.usage.input_tokens + 5


def test_json_schema_text_format_parses(client: OpenAI) -> None:
    for seed in range(3):
        out = client.responses.parse(model=MODEL, input="Judge it", text_format=Answer, temperature=1.0,
                                     max_output_tokens=60, extra_body={"seed": seed})
        assert isinstance(out.output_parsed, Answer)
    with client.responses.stream(model=MODEL, input="Judge it", text_format=Answer, max_output_tokens=60) as stream:
        assert isinstance(stream.get_final_response().output_parsed, Answer)


@pytest.mark.parametrize(("extra", "param"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"input": [{"type": "input_image", "image_url": "x"}]}, "input.0.type"),
    ({"text": {"format": {"type": "xml"}}}, "text.format"),
    ({"background": True}, "background"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
])
def test_unsupported_responses_fields_are_400s(base_url: str, extra: dict, param: str) -> None:
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 3, **extra}
    response = httpx.post(f"{base_url}/responses", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
