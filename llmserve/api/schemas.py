"""Request models of the OpenAI wire format (HTTP edge only).

Unknown fields are ignored, as real clients send OpenAI-only ones (`store`, `metadata`, ...).
Models are strict: no string or number becomes a boolean, no string or float an integer. Every
integer is bounded to int64, so nothing the engine cannot put in a tensor gets past the edge.
Bounds that depend on the server's config are checked in `api/params.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from llmserve.api.structured import StructuredFields
from llmserve.api.tools import ToolFields, ToolMessageFields

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""An integer the engine can hold in an int64 tensor."""
NonNegativeInt64 = Annotated[int, Field(ge=0, le=INT64_MAX)]


# Token-id lists (up to a million ids in a 4 MB body) are checked by Python loops: pydantic's Rust
# validation of such a list holds the GIL, and so stalls every stream, for 0.2-0.9 s even in a worker
# thread; a Python loop lets the event loop in every few milliseconds.

def _is_int64_list(value: object, minimum: int = INT64_MIN) -> bool:
    return isinstance(value, list) and all(type(v) is int and minimum <= v <= INT64_MAX for v in value)


def _token_ids(value: object) -> list[int]:
    if not _is_int64_list(value, 0):
        raise ValueError(f"expected a list of token ids (integers 0..{INT64_MAX})")
    return value  # type: ignore[return-value]


def _prompt(value: object) -> Any:
    """A string, a list of strings, a list of token ids or a list of token-id lists."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        first = value[0] if value else None
        if not value or (isinstance(first, str) and all(isinstance(v, str) for v in value)):
            return value
        if _is_int64_list(value) or (isinstance(first, list) and all(_is_int64_list(ids) for ids in value)):
            return value
    raise ValueError("expected a string, a list of strings, a list of token ids or a list of token-id lists")


TokenIds = Annotated[list[int], PlainValidator(_token_ids)]
"""A list of non-negative int64 token ids."""
PromptInput = Annotated[str | list[str] | list[int] | list[list[int]], PlainValidator(_prompt)]
"""A completions prompt or embeddings input."""
_Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class StrictRequest(BaseModel):
    """Base of every request model: unknown fields ignored, known ones type-checked strictly."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(StrictRequest):
    include_usage: bool = False


class TextPart(StrictRequest):
    type: str
    text: str | None = None


class ChatMessage(ToolMessageFields, StrictRequest):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class SamplingFields(StructuredFields, StrictRequest):
    """Fields shared by chat and completions requests."""

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=INT64_MAX)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=INT64_MAX)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    presence_penalty: _Penalty | None = None
    frequency_penalty: _Penalty | None = None
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    seed: Int64 | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False
    stop_token_ids: TokenIds | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None


class ChatCompletionRequest(ToolFields, SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    logprobs: bool = False
    top_logprobs: NonNegativeInt64 | None = None


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    max_tokens: NonNegativeInt64 | None = None  # 0 with echo: score the prompt only
    echo: bool = False
    logprobs: NonNegativeInt64 | None = None
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=INT64_MAX)
