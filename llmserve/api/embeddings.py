"""POST /v1/embeddings (and /v1/engines/{model}/embeddings): inputs -> token ids -> worker -> vectors.

`input` is a string, a list of strings, a list of token ids or a list of token-id lists; strings
are tokenized with the model's special tokens (as sentence-transformers does), token ids are taken
as they are. Each input becomes one sequence of the worker's embedding engine, so inputs of
concurrent requests are embedded together. An input longer than the model's limit is a 400 with
the counts, or is truncated when the worker has `truncate = true`. `usage` counts the tokens
embedded. `encoding_format` "base64" (the official SDK's default) is little-endian float32.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llmserve.api.json_body import read_body
from llmserve.api.schemas import INT64_MAX, PromptInput, StrictRequest
from llmserve.api.state import server_state
from llmserve.api.streaming import new_id, raise_if_error, until_disconnect
from llmserve.embedding.embedder import truncate_ids
from llmserve.embedding.encoding import encode_embedding
from llmserve.embedding.engine import EmbeddingEngine, EmbeddingOutput
from llmserve.engine.request import SamplingParams
from llmserve.errors import ContextLengthError, InvalidRequestError, ServiceUnavailableError
from llmserve.request_stream import RequestStream

MAX_INPUTS = 2048  # OpenAI's limit of inputs per request
_UNUSED_PARAMS = SamplingParams()  # embedding engines ignore sampling parameters


class EmbeddingRequest(StrictRequest):
    """The OpenAI embeddings request; unknown fields are ignored."""

    model: str | None = Field(default=None, min_length=1)
    input: PromptInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=INT64_MAX)
    user: str | None = None


async def create_embedding(request: Request) -> Response:
    state = server_state(request)
    body = await read_body(request, EmbeddingRequest)
    model = request.path_params.get("model") or body.model
    if not model:
        raise InvalidRequestError("'model' is a required property", param="model")
    worker = state.choose_worker(model, task="embed")
    engine = worker.engine
    assert isinstance(engine, EmbeddingEngine)
    if body.dimensions is not None and body.dimensions != engine.num_dimensions:
        raise InvalidRequestError(
            f"This model's embeddings have {engine.num_dimensions} dimensions and cannot be shortened; "
            f"dimensions = {body.dimensions} is not supported (leave it out or pass {engine.num_dimensions})",
            param="dimensions")
    inputs = token_ids(body.input, worker.tokenizer, engine.vocab_size)
    limit = min(MAX_INPUTS, worker.config.max_num_seqs + worker.config.max_waiting)
    if len(inputs) > limit:
        raise InvalidRequestError(f"at most {limit} inputs are allowed per request, got {len(inputs)}",
                                  param="input")
    inputs = fit_inputs(inputs, worker.max_model_len, worker.config.truncate, worker.tokenizer.all_special_ids)
    stream = worker.submit([(ids, _UNUSED_PARAMS) for ids in inputs], new_id("embd"))
    try:
        vectors = await until_disconnect(request, _collect(stream))
    finally:
        worker.release(stream)
    if vectors is None:
        return Response(status_code=499)
    num_tokens = sum(len(ids) for ids in inputs)
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode_embedding(v, body.encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
    })


def token_ids(value: Any, tokenizer: Any, vocab_size: int) -> list[list[int]]:
    """The request's inputs as token-id lists: strings tokenized with special tokens, ids checked."""
    items: list[Any] = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else list(value)
    if not items:
        raise InvalidRequestError("input must not be empty", param="input")
    if isinstance(items[0], str):
        if any(not text for text in items):
            raise InvalidRequestError("input must not contain empty strings", param="input")
        return [list(ids) for ids in tokenizer(items, add_special_tokens=True, verbose=False)["input_ids"]]
    for ids in items:
        if not ids:
            raise InvalidRequestError("input must not contain empty token lists", param="input")
        if any(i < 0 or i >= vocab_size for i in ids):
            raise InvalidRequestError(f"input token ids must be in [0, {vocab_size})", param="input")
    return [list(ids) for ids in items]


def fit_inputs(inputs: list[list[int]], max_tokens: int, truncate: bool,
               special_ids: Collection[int]) -> list[list[int]]:
    """Inputs within the model's limit: truncated (keeping the special tokens at both ends) or a 400."""
    for i, ids in enumerate(inputs):
        if len(ids) > max_tokens and not truncate:
            where = "The input" if len(inputs) == 1 else f"Input {i}"
            raise ContextLengthError(
                f"{where} has {len(ids)} tokens, but this model takes at most {max_tokens} tokens per input. "
                "Shorten the input (or serve the model with truncate = true).", param="input")
    special = frozenset(special_ids)
    return [truncate_ids(ids, max_tokens, special) for ids in inputs]


async def _collect(stream: RequestStream) -> list[Any]:
    """Every input's vector, in input order."""
    vectors: list[Any] = [None] * len(stream.seq_ids)
    async for index, output in stream:
        raise_if_error(output)
        if not isinstance(output, EmbeddingOutput) or output.embedding is None:
            raise ServiceUnavailableError("the request was aborted: the server is shutting down")
        vectors[index] = output.embedding
    return vectors

