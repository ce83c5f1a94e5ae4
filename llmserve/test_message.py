"""`llmserve test-message`: check that a running server serves a model and answers a chat message.

Lists the served models, sends one short message, streams the reply and reports the time to
first token and tokens per second. Each failure (server down, model not served, empty reply)
is a `MessageCheckError` with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from llmserve.chat.backends import ChatError
from llmserve.chat.client import OpenAIClient

DEFAULT_MESSAGE = "Tell me a story with more than 500 words."


class MessageCheckError(Exception):
    """Why the check failed, in one line."""


@dataclass(frozen=True)
class MessageCheck:
    """What the check measured."""

    model: str
    reply: str
    num_output_tokens: int
    time_to_first_token_s: float
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per second from sending the message to the end of the reply."""
        return self.num_output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        return (f"TTFT {self.time_to_first_token_s:.3f} s, {self.tokens_per_s:.1f} tokens/s "
                f"({self.num_output_tokens} tokens in {self.elapsed_s:.2f} s)")


def check_message(base_url: str, model: str, api_key: str | None = None, message: str = DEFAULT_MESSAGE,
                  max_tokens: int = 128, write: Callable[[str], None] | None = None,
                  transport: httpx.BaseTransport | None = None, ca_cert: str | None = None) -> MessageCheck:
    """Run the check against `base_url`; `write` receives the transcript as it streams; an https
    server is verified against `ca_cert` when given (else the system's CAs or SSL_CERT_FILE)."""
    out = write or (lambda text: None)
    try:
        client = OpenAIClient(base_url, api_key, transport, ca_cert=ca_cert)
    except ChatError as exc:
        raise MessageCheckError(str(exc)) from None
    try:
        served = _served_models(client)
        out(f"models: {', '.join(served)}\n")
        if model not in served:
            raise MessageCheckError(f"model '{model}' is not served by {client.base_url} "
                                    f"(served: {', '.join(served) or 'none'})")
        out(f"user: {message}\nassistant: ")
        return _stream(client, model, message, max_tokens, out)
    finally:
        client.close()


def _served_models(client: OpenAIClient) -> list[str]:
    try:
        return client.list_models()
    except ChatError as exc:
        raise MessageCheckError(str(exc)) from None


def _stream(client: OpenAIClient, model: str, message: str, max_tokens: int,
            out: Callable[[str], None]) -> MessageCheck:
    parts: list[str] = []
    try:
        stream = client.stream_chat(model, [{"role": "user", "content": message}], max_tokens=max_tokens)
        for delta in stream:
            parts.append(delta)
            out(delta)
    except ChatError as exc:
        raise MessageCheckError(str(exc)) from None
    finally:
        out("\n")
    reply = "".join(parts)
    if not reply.strip() or stream.first_token_s is None:
        raise MessageCheckError(f"model '{model}' sent an empty reply (finish reason: {stream.finish_reason})")
    assert stream.finished_s is not None
    return MessageCheck(model, reply, stream.num_output_tokens, stream.first_token_s - stream.started_s,
                        stream.finished_s - stream.started_s)
