"""Request models of the OpenAI wire format (HTTP edge only).

Unknown fields are ignored, as real clients send OpenAI-only ones (`store`, `metadata`, ...).
Models are strict: no string or number becomes a boolean, no string or float an integer. Every
integer is bounded to int64, so nothing the engine cannot put in a tensor gets past the edge.
Bounds that depend on the server's config are checked in `api/params.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmserve.api.structured import StructuredFields
from llmserve.api.tools import ToolFields, ToolMessageFields

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""An integer the engine can hold in an int64 tensor."""
NonNegativeInt64 = Annotated[int, Field(ge=0, le=INT64_MAX)]
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
    stop_token_ids: list[NonNegativeInt64] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None


class ChatCompletionRequest(ToolFields, SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)
    logprobs: bool = False
    top_logprobs: NonNegativeInt64 | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[Int64] | list[list[Int64]]
    max_tokens: NonNegativeInt64 | None = None  # 0 with echo: score the prompt only
    echo: bool = False
    logprobs: NonNegativeInt64 | None = None
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=INT64_MAX)
