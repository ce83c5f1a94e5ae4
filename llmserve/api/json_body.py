"""Request bodies as validated models: the one JSON parser of every JSON route (API and UI).

Nothing a client sends can make it fail with a 500 or stall the event loop:

- nesting deeper than `MAX_DEPTH` and numbers longer than `MAX_NUMBER_DIGITS` digits are refused
  before the parser builds anything (Python's parser would raise RecursionError, and turning a
  number of thousands of digits into an int is quadratic and capped by the interpreter);
- `NaN`, `Infinity` and floats that overflow to infinity are not JSON numbers and are refused;
- a string holding a lone UTF-16 surrogate (`"\\ud800"`) is refused with the field that has it:
  tokenizers and encoders cannot take it;
- the request models are strict (see api/schemas.py): no string or number becomes a boolean;
- a client that disconnects mid-body ends the request as a `ClientDisconnectedError`, not an error;
- bodies over `OFF_LOOP_BYTES` are parsed and validated in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from llmserve.errors import ClientDisconnectedError, InvalidRequestError, UnsupportedMediaTypeError

_M = TypeVar("_M", bound=BaseModel)

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted (the deepest request is about 5)."""
MAX_NUMBER_DIGITS = 40
"""Most digits in a run of one number (int64 needs 19, a double's shortest form 17 and its exponent 3)."""
OFF_LOOP_BYTES = 32_768
"""Bodies larger than this are parsed in a worker thread, so other streams keep flowing meanwhile."""

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_IS_BRACKET = np.isin(np.arange(256), np.frombuffer(b"[]{}", dtype=np.uint8))
_OPENING = np.frombuffer(b"[{", dtype=np.uint8)


async def read_body(request: Request, model: type[_M]) -> _M:
    """Parse and validate a JSON body; every failure is a 4xx naming the reason or the field."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "", "text/plain"):
        raise UnsupportedMediaTypeError(f"expected Content-Type application/json, got '{content_type[:80]}'")
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise ClientDisconnectedError("the client disconnected while sending the request body") from None
    if len(raw) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_body, raw, model, True)
    return parse_body(raw, model)


def parse_body(raw: bytes, model: type[_M], lets_go: bool = False) -> _M:
    """Bytes -> validated model, or an `InvalidRequestError` (synchronous; see `read_body`).
    `lets_go`: parse so that a thread running this gives the GIL up now and then (see `parse_json`)."""
    data = parse_json(raw, lets_go)
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def parse_json(raw: bytes, lets_go: bool = False, what: str = "the request body") -> Any:
    """JSON within the depth and number limits, free of lone surrogates.

    `lets_go`: integers are built by a Python function, so the interpreter can switch threads between
    them: the C parser alone holds the GIL for a quarter of a second over a million token ids (an
    event-loop stall even from a worker thread); this way it is let go every few milliseconds.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(f"{what} is not valid UTF-8") from None
    _check_shape(raw, what)
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                          parse_int=_int if lets_go else None)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} "
                                  f"column {exc.colno}") from None
    except RecursionError:  # unreachable after _check_shape; kept so no input can become a 500
        raise InvalidRequestError(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    if _SURROGATE_ESCAPE.search(raw) is not None:
        _reject_lone_surrogates(data)
    return data


def _check_shape(raw: bytes, what: str) -> None:
    """Depth and number length, measured on the body outside its string literals.

    Vectorised over the positions of quotes, brackets and long digit runs only (where a regex that
    stripped the literals held the GIL for a quarter of a second on a body of 100k small objects,
    stalling every stream even with the parse in a worker thread)."""
    may_be_deep = raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
    may_have_long_number = longest_digit_run(raw) > MAX_NUMBER_DIGITS
    if not (may_be_deep or may_have_long_number):
        return
    codes = np.frombuffer(raw, dtype=np.uint8)
    quotes = literal_quotes(codes)
    if may_have_long_number:
        starts, lengths = _digit_runs(codes)
        long_starts = starts[lengths > MAX_NUMBER_DIGITS]
        if _outside(long_starts, quotes).any():
            raise InvalidRequestError(f"{what} has a number of more than {MAX_NUMBER_DIGITS} digits")
    if may_be_deep:
        brackets = np.flatnonzero(_IS_BRACKET[codes])
        kept = codes[brackets[_outside(brackets, quotes)]].tobytes()
        if nesting_depth(kept) > MAX_DEPTH:
            raise InvalidRequestError(f"{what} nests deeper than {MAX_DEPTH} levels")


def literal_quotes(codes: np.ndarray) -> np.ndarray:
    """Positions of the quotes that open or close string literals: every `"` but those escaped by an
    odd run of backslashes before it."""
    quotes = np.flatnonzero(codes == ord('"'))
    after_backslash = quotes[(quotes > 0) & (codes[np.maximum(quotes - 1, 0)] == ord("\\"))]
    if after_backslash.size == 0:
        return quotes
    backslashes = np.flatnonzero(codes == ord("\\"))
    new_run = np.concatenate(([True], np.diff(backslashes) != 1))
    run_start = backslashes[np.maximum.accumulate(np.where(new_run, np.arange(backslashes.size), 0))]
    ends = np.searchsorted(backslashes, after_backslash - 1)  # the backslash just before each quote
    escaped = after_backslash[(after_backslash - run_start[ends]) % 2 == 1]
    return np.setdiff1d(quotes, escaped, assume_unique=True)


def _outside(positions: np.ndarray, quotes: np.ndarray) -> np.ndarray:
    """Whether each byte position lies outside every string literal (an even number of literal quotes
    before it; an unterminated literal runs to the end, and the parser refuses it)."""
    return np.searchsorted(quotes, positions) % 2 == 0


def _digit_runs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of every run of ASCII digits."""
    is_digit = np.concatenate(([False], (codes >= ord("0")) & (codes <= ord("9")), [False]))
    changes = np.flatnonzero(is_digit[1:] != is_digit[:-1])
    return changes[0::2], changes[1::2] - changes[0::2]


def longest_digit_run(raw: bytes) -> int:
    """Longest run of ASCII digits (vectorised: a regex over a body of a million numbers holds the GIL
    for most of a second)."""
    codes = np.frombuffer(raw, dtype=np.uint8)
    breaks = np.flatnonzero((codes < ord("0")) | (codes > ord("9")))
    edges = np.concatenate(([-1], breaks, [codes.size]))
    return int(np.diff(edges).max()) - 1


def nesting_depth(skeleton: bytes) -> int:
    """Deepest bracket nesting of JSON text without string literals (vectorised: bodies are up to MBs)."""
    brackets = np.frombuffer(skeleton.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if brackets.size == 0:
        return 0
    steps = np.where(np.isin(brackets, _OPENING), 1, -1)
    return int(np.cumsum(steps).max())


def _int(text: str) -> int:
    return int(text)


def _reject_constant(name: str) -> Any:
    raise InvalidRequestError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequestError(f"the number {text[:24]} is too large")
    return value


def _reject_lone_surrogates(data: Any) -> None:
    """400 naming the first key or string value that holds an unpaired UTF-16 surrogate."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not _is_valid_unicode(value):
                raise _surrogate_error(path)
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else key
                if not _is_valid_unicode(key):
                    raise _surrogate_error(path or None)
                stack.append((item, child))
        elif isinstance(value, list):
            stack.extend((item, f"{path}.{i}" if path else str(i)) for i, item in enumerate(value))


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate_error(path: str | None) -> InvalidRequestError:
    where = f"'{path}'" if path else "a key"
    return InvalidRequestError(f"invalid Unicode in {where}: a lone UTF-16 surrogate (\\ud800-\\udfff) is "
                               "not text", param=path)


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """The first pydantic error as an OpenAI-style 400, without echoing the input."""
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in first["loc"] if not _is_union_tag(part)]
    param = ".".join(loc) or None
    message = first["msg"]
    if first["type"] == "missing":
        message = f"'{param}' is a required property"
    elif param:
        message = f"invalid value for '{param}': {message}"
    return InvalidRequestError(message, param=param)


def _is_union_tag(part: object) -> bool:
    text = str(part)
    return text in {"str", "int", "list[str]", "list[int]", "list[list[int]]", "list[TextPart]"} or text.startswith(
        ("function-", "list[", "constrained-", "json-or-python")
    )
