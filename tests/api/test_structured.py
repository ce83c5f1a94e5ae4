"""Structured output through the official SDK against the live app: response_format and structured_outputs."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

MODEL = "tiny-llama"
MESSAGES = [{"role": "user", "content": "Describe a person."}]


class Role(StrEnum):
    admin = "admin"
    user = "user"


class Address(BaseModel):
    zip: str = Field(pattern=r"^[0-9]{5}$")
    verified: bool


class Person(BaseModel):
    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=120)
    role: Role
    nicknames: list[Annotated[str, Field(max_length=8)]] = Field(max_length=2)
    address: Address  # pydantic puts it under $defs


@pytest.fixture(scope="module")
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0)


def test_parse_with_a_pydantic_model_returns_parsed_objects(client: OpenAI) -> None:
    """`chat.completions.parse` (strict json_schema from a nested pydantic model, $defs and enum)."""
    schema = Person.model_json_schema()
    assert "$defs" in schema
    for seed in range(8):
        out = client.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Person,
                                            temperature=1.0, seed=seed, max_tokens=300)
        choice = out.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, Person)
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_streamed_parse_equals_the_whole_answer(client: OpenAI) -> None:
    args = {"model": MODEL, "messages": MESSAGES, "response_format": Person, "temperature": 1.0, "seed": 11,
            "max_tokens": 300}
    whole = client.chat.completions.parse(**args)
    with client.chat.completions.stream(**args) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == whole.choices[0].message.parsed
    assert final.choices[0].message.content == whole.choices[0].message.content


def test_json_schema_strict_over_many_seeds_with_n(client: OpenAI) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["items", "kind"],
              "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3,
                                       "items": {"type": "integer", "minimum": -5, "maximum": 5}},
                             "kind": {"enum": ["a", "b", None]}}}
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=8, temperature=1.0, seed=5, max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}})
    for choice in out.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_mode(client: OpenAI) -> None:
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0.5, seed=1,
                                         max_tokens=400, response_format={"type": "json_object"})
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].message.content), dict)
    else:  # cut by max_tokens: still the prefix of an object
        assert out.choices[0].message.content.startswith("{")


def test_structured_outputs_extras_regex_choice_grammar(client: OpenAI) -> None:
    regex = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=1.0, seed=2, max_tokens=30,
                                           extra_body={"structured_outputs": {"regex": r"[0-9]{3}-[a-c]{2}"}})
    assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", regex.choices[0].message.content)
    choice = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=1.0, seed=2, max_tokens=30,
                                            extra_body={"structured_outputs": {"choice": ["yes", "no way"]}})
    assert choice.choices[0].message.content in ("yes", "no way") and choice.choices[0].finish_reason == "stop"
    grammar = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0.0, max_tokens=30,
        extra_body={"structured_outputs": {"grammar": 'root ::= "x" ("y" | "z") "!"'}})
    assert grammar.choices[0].message.content in ("xy!", "xz!")
    completion = client.completions.create(model=MODEL, prompt="Say", temperature=1.0, seed=3, max_tokens=20,
                                           extra_body={"structured_outputs": {"json": {"enum": [1, 2, 3]}}})
    assert json.loads(completion.choices[0].text) in (1, 2, 3)


@pytest.mark.parametrize(("extra", "param", "words"), [
    ({"response_format": {"type": "xml"}}, "response_format.type", "json_schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}}},
     "response_format.json_schema.schema", "JSON schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "string"}}},
     "response_format.json_schema.schema", "dict"),
    ({"structured_outputs": {"regex": "(a"}}, "structured_outputs.regex", "regular expression"),
    ({"structured_outputs": {"grammar": "root ::= nothing"}}, "structured_outputs.grammar", "grammar"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag", "Extra inputs"),
    ({"guided_json": {"type": "object"}}, "guided_json", "structured_outputs.json"),
    ({"guided_choice": ["a"]}, "guided_choice", "structured_outputs.choice"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs",
     "both"),
    ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos", "ignore_eos"),
])
def test_bad_structured_requests_are_400s_naming_the_field(base_url: str, extra: dict, param: str,
                                                           words: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, **extra}
    response = httpx.post(f"{base_url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_sdk_raises_bad_request_for_an_invalid_schema(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": 3}}})
