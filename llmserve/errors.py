"""Every error llmserve raises, and the one function that renders them as OpenAI error bodies.

Hierarchy (HTTP status, OpenAI `type`)::

    ConfigError                          start-up only: a bad config value, never an HTTP answer
    LLMServeError                        500 internal_error (base; message is safe to show)
    +-- InvalidRequestError              400 invalid_request_error  recoverable: fix the request
    |   +-- ContextLengthError           400 invalid_request_error  code context_length_exceeded
    +-- AuthenticationError              401 authentication_error   code invalid_api_key
    +-- ModelNotFoundError               404 invalid_request_error  code model_not_found
    +-- RouteNotFoundError               404 invalid_request_error
    +-- MethodNotAllowedError            405 invalid_request_error
    +-- RequestTooLargeError             413 invalid_request_error
    +-- UnsupportedMediaTypeError        415 invalid_request_error
    +-- ClientDisconnectedError          499 (no one to answer: not logged, not counted)
    +-- RateLimitError                   429 requests               code rate_limit_exceeded; Retry-After
    +-- ServiceUnavailableError          503 service_unavailable    recoverable: retry later
    +-- EngineError                      500 internal_error         a step failed; the worker goes on
    +-- WorkerDeadError                  503 service_unavailable    fatal for that worker

Messages never carry stack traces, file paths or memory addresses.
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """A configuration value is invalid; the message names the key path and the value."""


class LLMServeError(Exception):
    """Base of errors that become an HTTP answer."""

    status_code = 500
    error_type = "internal_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers for this error."""
        return {}


class InvalidRequestError(LLMServeError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(LLMServeError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class ModelNotFoundError(LLMServeError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class RouteNotFoundError(LLMServeError):
    status_code = 404
    error_type = "invalid_request_error"


class MethodNotAllowedError(LLMServeError):
    status_code = 405
    error_type = "invalid_request_error"


class RequestTooLargeError(LLMServeError):
    status_code = 413
    error_type = "invalid_request_error"


class UnsupportedMediaTypeError(LLMServeError):
    status_code = 415
    error_type = "invalid_request_error"


class ClientDisconnectedError(LLMServeError):
    """The client went away before its request was read in full; nothing is sent back."""

    status_code = 499
    error_type = "client_closed_request"


class RateLimitError(LLMServeError):
    """A client spent its allowance (the arena's battles and votes); OpenAI's 429 body and type."""

    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ServiceUnavailableError(LLMServeError):
    status_code = 503
    error_type = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class EngineError(LLMServeError):
    """A worker step failed; only the requests of that step are affected."""


class WorkerDeadError(ServiceUnavailableError):
    """The worker's loop has died; it takes no more requests."""


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def render_error(exc: LLMServeError) -> dict:
    """The OpenAI error object for one of our errors."""
    return error_body(exc.message, exc.error_type, exc.param, exc.code)
