"""The remote backend: chat with a running llmserve (or any OpenAI-compatible server) over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from llmserve.chat.backends import ChatError, GenerationParams, Message, ReplyStats
from llmserve.chat.client import ChatStream, OpenAIClient


class RemoteBackend:
    """Streams `/v1/chat/completions`; `abort()` closes the HTTP stream, which aborts the request."""

    def __init__(self, client: OpenAIClient, model: str, seed: int | None = None) -> None:
        self.client = client
        self.model = model
        self._seed = seed
        self._num_requests = 0
        self._stream: ChatStream | None = None
        self._last_stats: ReplyStats | None = None

    @classmethod
    def connect(cls, base_url: str, model: str | None, api_key: str | None,
                seed: int | None = None, ca_cert: str | None = None) -> RemoteBackend:
        """Check the server answers and serves `model` (default: the first model it lists)."""
        client = OpenAIClient(base_url, api_key, ca_cert=ca_cert)
        try:
            served = client.list_models()
            if not served:
                raise ChatError(f"{client.base_url} serves no model yet")
            if model is not None and model not in served:
                raise ChatError(f"model '{model}' is not served by {client.base_url} (served: {', '.join(served)})")
        except ChatError:
            client.close()
            raise
        return cls(client, model or served[0], seed)

    @property
    def template_name(self) -> str:
        return f"server-side ({self.model})"

    @property
    def last_stats(self) -> ReplyStats | None:
        return self._last_stats

    def render_prompt(self, messages: list[Message]) -> str:
        """The server applies the template, so the prompt shown is the messages sent."""
        return json.dumps(messages, ensure_ascii=False)

    def stream_reply(self, messages: list[Message], params: GenerationParams) -> Iterator[str]:
        fields: dict[str, Any] = {"temperature": params.temperature, "top_p": params.top_p,
                                  "max_tokens": params.max_new_tokens}
        if self._seed is not None:  # reproducible runs, yet !!regen still gives a new answer
            fields["seed"] = self._seed + self._num_requests
        self._num_requests += 1
        self._stream = self.client.stream_chat(self.model, messages, **fields)
        return self._read(self._stream)

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def close(self) -> None:
        self.abort()
        self.client.close()

    def _read(self, stream: ChatStream) -> Iterator[str]:
        try:
            yield from stream
        finally:
            stream.close()
            if self._stream is stream:
                self._stream = None
            first = stream.first_token_s - stream.started_s if stream.first_token_s is not None else None
            assert stream.finished_s is not None
            self._last_stats = ReplyStats(stream.num_output_tokens, stream.finished_s - stream.started_s,
                                          first, stream.finish_reason or "abort")
