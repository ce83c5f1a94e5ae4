"""The same flows through langchain-openai and openai-agents (test-only dependencies) against the live app."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

MODEL = "tiny-llama"


class Answer(BaseModel):
    verdict: bool
    score: int = Field(ge=0, le=10)


def get_weather(city: Literal["Paris", "Rome"], unit: Literal["c", "f"]) -> str:
    """The weather in a city."""
    return f"sunny in {city}, 20 {unit}"


def test_langchain_bind_tools_and_structured_output(base_url: str) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=base_url, api_key="unused", max_retries=0, temperature=1.0, seed=3,
                     max_tokens=120)
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"]["city"] in ("Paris", "Rome")
    streamed = None
    for chunk in llm.bind_tools([get_weather], tool_choice="required").stream("Weather?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and streamed.tool_calls[0]["name"] == "get_weather"
    for method in ("json_schema", "function_calling"):
        result = llm.with_structured_output(Answer, method=method).invoke("Judge it")
        assert isinstance(result, Answer), method
    raw = llm.with_structured_output(None, method="json_mode").invoke("Answer in JSON")
    assert isinstance(raw, dict)


@pytest.mark.parametrize("api", ["responses", "chat"])
def test_openai_agents_tool_agent_and_output_type_agent(base_url: str, api: str) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        ToolCallItem,
        ToolCallOutputItem,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    model_cls = OpenAIResponsesModel if api == "responses" else OpenAIChatCompletionsModel
    model = model_cls(model=MODEL, openai_client=client)
    tool_agent = Agent(name="weather", instructions="Use the tool.", tools=[function_tool(get_weather)], model=model,
                       model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False, max_tokens=200,
                                                    temperature=1.0),
                       # A random model's free text after the call would run to max_tokens: the tool's
                       # result is the answer.
                       tool_use_behavior="stop_on_first_tool")
    result = Runner.run_sync(tool_agent, "Weather in Rome?", max_turns=3)
    calls = [item for item in result.new_items if isinstance(item, ToolCallItem)]
    outputs = [item for item in result.new_items if isinstance(item, ToolCallOutputItem)]
    assert calls and outputs and outputs[0].output.startswith("sunny in ")
    assert result.final_output == outputs[0].output
    judge = Agent(name="judge", instructions="Judge.", output_type=Answer, model=model,
                  model_settings=ModelSettings(max_tokens=200, temperature=1.0))
    verdict = Runner.run_sync(judge, "Is the sky blue?", max_turns=1).final_output
    assert isinstance(verdict, Answer)
    jsonschema.validate(json.loads(verdict.model_dump_json()), Answer.model_json_schema())
