"""Tools in chat requests: the wire models, what reaches the chat template, and how calls are
forced (`tool_choice` "required" or a named function: the structured-output grammar of the
worker's tool-call format, so the model cannot answer without a call whose arguments validate).

History goes to the template the way transformers' `apply_chat_template(tools=...)` expects it:
tools as `{"type": "function", "function": {...}}` dicts, an assistant turn's `tool_calls` with
`arguments` decoded to a dict when it is a JSON object, a tool turn's `tool_call_id` kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmserve.api.json_body import parse_json
from llmserve.errors import InvalidRequestError
from llmserve.structured.spec import GrammarSpec
from llmserve.tool_parsers import FunctionTool, ToolParser, tool_parser_class

MAX_TOOLS = 128
# Template variables a request may not set through `chat_template_kwargs`: they are the server's.
_RESERVED_TEMPLATE_KWARGS = frozenset({
    "messages", "conversation", "tools", "documents", "chat_template", "add_generation_prompt", "tokenize",
    "continue_final_message", "return_dict", "return_tensors", "return_assistant_tokens_mask", "padding",
    "truncation", "max_length", "tokenizer_kwargs", "processor_kwargs",
})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class ToolCallFunction(_Strict):
    name: str = Field(min_length=1)
    arguments: str


class ToolCallIn(_Strict):
    """An assistant message's earlier call, as the client sends it back."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ToolMessageFields(BaseModel):
    """The tool-loop fields of a chat message (mixed into `ChatMessage`)."""

    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class ToolFields(BaseModel):
    """The tool and template fields of a chat request (mixed into `ChatCompletionRequest`)."""

    tools: list[ToolDef] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Any = None  # "none" | "auto" | "required" | NamedToolChoice: checked by `plan_tools`
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: str | None = Field(default=None, max_length=32)
    # OpenAI's deprecated spellings: declared only to be refused by name.
    functions: Any = None
    function_call: Any = None


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for this worker."""

    template_tools: list[dict[str, Any]] | None  # for the chat template; None: no tools in the prompt
    parser: type[ToolParser] | None  # reads calls back out of the answer; None: all of it is content
    grammar: GrammarSpec | None  # forces calls ("required" or a named function)
    parallel: bool


def plan_tools(body: ToolFields, parser_name: str, chat_template: str) -> ToolPlan:
    """Check the request's tools against each other and the worker; 400s name the field."""
    for legacy in ("functions", "function_call"):
        if getattr(body, legacy) is not None:
            raise InvalidRequestError(f"'{legacy}' is deprecated and not supported: use tools and tool_choice",
                                      param=legacy)
    choice = _tool_choice(body.tool_choice)
    parallel = body.parallel_tool_calls is not False
    if not body.tools:
        if choice not in ("none", "auto"):
            raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
        return ToolPlan(None, None, None, parallel)
    tools = [FunctionTool(t.function.name, t.function.description, t.function.parameters) for t in body.tools]
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tool function names must be unique", param="tools")
    if choice == "none":  # the model is not to call tools: they are not shown to it
        return ToolPlan(None, None, None, parallel)
    parser = tool_parser_class(parser_name, chat_template)
    if parser is None:
        raise InvalidRequestError("this model's chat template defines no tool-call format this server can read; "
                                  "set tool_parser in the worker's config", param="tools")
    grammar = None
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise InvalidRequestError(f"tool_choice names '{choice.function.name[:64]}', which is not in tools",
                                      param="tool_choice.function.name")
        forced = parser.forced_format([tools[names.index(choice.function.name)]], False)
        grammar = _structural_tag(forced)
    elif choice == "required":
        grammar = _structural_tag(parser.forced_format(tools, parallel))
    template_tools = [{"type": "function", "function": t.function.model_dump(exclude_none=True)} for t in body.tools]
    return ToolPlan(template_tools, parser, grammar, parallel)


def _tool_choice(value: Any) -> str | NamedToolChoice:
    """`tool_choice` checked here rather than by a union model, whose errors would name its branches."""
    if value is None:
        return "auto"
    if isinstance(value, str) and value in ("none", "auto", "required"):
        return value
    if isinstance(value, dict):
        try:
            return NamedToolChoice.model_validate(value)
        except ValidationError:
            pass
    raise InvalidRequestError('tool_choice must be "none", "auto", "required" or {"type": "function", '
                              '"function": {"name": ...}}', param="tool_choice")


def _structural_tag(fmt: dict[str, Any]) -> GrammarSpec:
    return GrammarSpec("structural_tag", json.dumps({"type": "structural_tag", "format": fmt}))


def template_kwargs(body: ToolFields, plan: ToolPlan) -> dict[str, Any]:
    """Extra variables for the chat template: tools, `chat_template_kwargs`, `reasoning_effort`."""
    kwargs = dict(body.chat_template_kwargs or {})
    for key in kwargs:
        if key in _RESERVED_TEMPLATE_KWARGS or not key.isidentifier():
            raise InvalidRequestError(f"chat_template_kwargs may not set '{key[:40]}'", param="chat_template_kwargs")
    if body.reasoning_effort is not None:
        kwargs["reasoning_effort"] = body.reasoning_effort
    if plan.template_tools is not None:
        kwargs["tools"] = plan.template_tools
    return kwargs


def template_tool_calls(calls: list[ToolCallIn]) -> list[dict[str, Any]]:
    """An assistant turn's calls for the template: arguments decoded when they hold a JSON object."""
    out = []
    for call in calls:
        try:
            arguments: Any = parse_json(call.function.arguments.encode())
        except InvalidRequestError:  # not JSON, or beyond json_body's limits: kept as the string
            arguments = call.function.arguments
        if not isinstance(arguments, dict):
            arguments = call.function.arguments
        out.append({"id": call.id, "type": "function",
                    "function": {"name": call.function.name, "arguments": arguments}})
    return out
