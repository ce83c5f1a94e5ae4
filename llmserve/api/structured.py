"""Structured-output fields of a request -> one `GrammarSpec`, compiled (and so checked) up front.

Two spellings reach the same engine feature:
- OpenAI's `response_format`: `{"type": "text" | "json_object" | "json_schema", "json_schema":
  {"name", "schema", "strict", "description"}}` (what `client.chat.completions.parse`,
  langchain's `with_structured_output` and instructor send);
- vLLM's `structured_outputs` extra: exactly one of `json` (a schema), `regex`, `choice`, `grammar`
  (EBNF) or `json_object`. vLLM's older `guided_*` fields are refused with the new name to use, as
  are the `structured_outputs` options not implemented here (never accepted and dropped).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmserve.errors import InvalidRequestError
from llmserve.structured.compiler import check_json_schema
from llmserve.structured.spec import GrammarSpec

MAX_GRAMMAR_CHARS = 65_536
"""Longest schema, regex or grammar text accepted (compile time grows with it)."""
MAX_CHOICES = 1024
LEGACY_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                 "guided_grammar": "grammar", "guided_decoding_backend": None, "guided_whitespace_pattern": None}


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`."""

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)
    name: str = Field(default="response", max_length=256)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`; an unknown `type` is a 400."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`; keys this server does not implement are a 400 (extra forbidden)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    json_: dict[str, Any] | str | None = Field(default=None, alias="json")
    regex: str | None = Field(default=None, max_length=MAX_GRAMMAR_CHARS)
    choice: list[str] | None = Field(default=None, min_length=1, max_length=MAX_CHOICES)
    grammar: str | None = Field(default=None, max_length=MAX_GRAMMAR_CHARS)
    json_object: bool | None = None


class StructuredFields(BaseModel):
    """The structured-output fields of chat and completions requests (mixed into their models)."""

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # vLLM's removed spellings: declared only to be refused by name (see `output_constraint`).
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    guided_decoding_backend: Any = None
    guided_whitespace_pattern: Any = None


def output_constraint(body: StructuredFields, ignore_eos: bool = False) -> tuple[GrammarSpec, str] | None:
    """The request's output constraint and the parameter it came from; None for free text."""
    for name, new in LEGACY_FIELDS.items():
        if getattr(body, name) is not None:
            hint = f"use structured_outputs.{new}" if new else "it is not supported"
            raise InvalidRequestError(f"'{name}' is not supported: {hint}", param=name)
    found = grammar_spec(body.response_format, body.structured_outputs)
    if found is not None and ignore_eos:
        raise InvalidRequestError("ignore_eos cannot be combined with structured output: the grammar's end "
                                  "is the end of the answer", param="ignore_eos")
    return found


def grammar_spec(response_format: ResponseFormat | None,
                 structured_outputs: StructuredOutputs | None) -> tuple[GrammarSpec, str] | None:
    """The request's output constraint and the parameter it came from; None for free text."""
    from_format = _from_response_format(response_format) if response_format is not None else None
    from_extra = _from_structured_outputs(structured_outputs) if structured_outputs is not None else None
    if from_format is not None and from_extra is not None:
        raise InvalidRequestError("response_format and structured_outputs cannot both constrain the output",
                                  param="structured_outputs")
    return from_format or from_extra


def _from_response_format(fmt: ResponseFormat) -> tuple[GrammarSpec, str] | None:
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return GrammarSpec("json_object"), "response_format"
    if fmt.json_schema is None:
        raise InvalidRequestError("response_format of type json_schema needs a 'json_schema' object",
                                  param="response_format.json_schema")
    if fmt.json_schema.schema_ is None:  # OpenAI makes `schema` optional: then any JSON object
        return GrammarSpec("json_object"), "response_format.json_schema"
    param = "response_format.json_schema.schema"
    return _schema_spec(fmt.json_schema.schema_, param), param


def _from_structured_outputs(extra: StructuredOutputs) -> tuple[GrammarSpec, str] | None:
    chosen = [name for name in ("json_", "regex", "choice", "grammar", "json_object")
              if getattr(extra, name) not in (None, False)]
    if len(chosen) != 1:
        raise InvalidRequestError("structured_outputs needs exactly one of json, regex, choice, grammar, "
                                  "json_object", param="structured_outputs")
    name = chosen[0]
    param = f"structured_outputs.{name.rstrip('_')}"
    if name == "json_":
        schema = extra.json_
        if isinstance(schema, str):
            schema = _parse_schema_text(schema, param)
        return _schema_spec(schema, param), param
    if name == "json_object":
        return GrammarSpec("json_object"), param
    if name == "choice":
        assert extra.choice is not None
        if any(not option for option in extra.choice):
            raise InvalidRequestError("choices must be non-empty strings", param=param)
        return GrammarSpec.choice(extra.choice), param
    text = extra.regex if name == "regex" else extra.grammar
    assert text is not None
    return GrammarSpec(name, text), param  # type: ignore[arg-type]


def _parse_schema_text(text: str, param: str) -> Any:
    from llmserve.api.json_body import parse_json  # the request parser's limits: depth, number size

    try:
        return parse_json(text.encode(), what="the JSON schema string")
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, param=param) from None


def _schema_spec(schema: object, param: str) -> GrammarSpec:
    spec = GrammarSpec.json_schema(check_json_schema(schema, param))
    if len(spec.source) > MAX_GRAMMAR_CHARS:
        raise InvalidRequestError(f"the JSON schema may be at most {MAX_GRAMMAR_CHARS} characters", param=param)
    return spec


async def compile_spec(engine: Any, spec: GrammarSpec, param: str) -> None:
    """Compile `spec` with the engine's compiler in a thread (an invalid one is a 400 naming
    `param`); the engine's own compile is then a cache hit."""
    structured = getattr(engine, "structured", None)
    if structured is None:
        raise InvalidRequestError("this model's engine does not support structured output", param=param)
    await asyncio.to_thread(structured.compiler.compile, spec, param)
